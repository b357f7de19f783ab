//! The command line as clap sees it: option names, value names and help texts.
//!
//! Values are collected raw. systemd validates them with its own parsers and reports
//! failures as a single line with an errno, which clap's value parsers cannot express;
//! `config` does that job.

use std::ffi::OsString;

use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};

const IMAGE: &str = "Image";
const HOST: &str = "Host Configuration";
const IDENTITY: &str = "System Identity";
const USERNS: &str = "User Namespacing";
const MOUNTS: &str = "Mounts";
const CREDENTIALS: &str = "Credentials";
const INTEGRATION: &str = "Integration";
const PROPERTIES: &str = "Properties";

// Options taking a value are `Append` so that every occurrence is validated, as getopt
// hands each one to systemd's parser; the last occurrence wins. Values may start with a
// hyphen because getopt takes the next argument as the value unconditionally.
#[derive(Debug, Parser)]
#[command(
    name = "rvmspawn",
    about = "Spawn an OS in a virtual machine, on KVM.",
    version,
    disable_help_flag = true,
    disable_version_flag = true,
    args_override_self = true,
    infer_long_args = true,
    max_term_width = 100
)]
pub struct Args {
    /// Show this help
    #[arg(short, long, action = ArgAction::Help)]
    help: Option<bool>,

    /// Print the version and exit
    #[arg(long, action = ArgAction::Version)]
    version: Option<bool>,

    /// Do not print status messages, only the guest's console output
    #[arg(short, long)]
    pub quiet: bool,

    /// Accepted for compatibility; rvmspawn never starts a pager
    #[arg(long)]
    pub no_pager: bool,

    /// Directory holding the guest's root file system
    #[arg(short = 'D', long, value_name = "PATH", help_heading = IMAGE,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub directory: Vec<OsString>,

    /// Disk image (or block device) holding the guest's root file system
    #[arg(short, long, value_name = "PATH", help_heading = IMAGE,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub image: Vec<OsString>,

    /// Number of virtual CPUs [default: 1]
    #[arg(long, value_name = "SMP", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub qemu_smp: Vec<String>,

    /// Guest memory size, like 512M or 2G [default: 2G]
    #[arg(long, value_name = "MEM", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub qemu_mem: Vec<String>,

    /// Whether to use KVM (rvmspawn always needs it) [default: auto]
    #[arg(long, value_name = "BOOL", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub qemu_kvm: Vec<String>,

    /// Whether to give the guest a vsock device [default: auto]
    #[arg(long, value_name = "BOOL", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub qemu_vsock: Vec<String>,

    /// Fixed vsock CID for the guest, 3 to 4294967294 [default: derived from the machine name, as vmspawn does]
    #[arg(long, value_name = "CID", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub vsock_cid: Vec<String>,

    /// Report ready to our supervisor when the guest does (yes), or once the VM runs (no)
    /// [default: yes]
    #[arg(long, value_name = "BOOL", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub notify_ready: Vec<String>,

    /// Whether to give the guest a software TPM (swtpm): when swtpm is found (auto), always
    /// (yes) or never (no) [default: auto]
    #[arg(long, value_name = "BOOL", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub tpm: Vec<String>,

    /// Where to keep the TPM's state: beside the image or directory (auto), nowhere (off) or
    /// in directory PATH [default: auto]
    #[arg(long, value_name = "PATH|auto|off", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub tpm_state: Vec<OsString>,

    /// Another disk image for the guest (after --image's; may be repeated); a `raw:` or
    /// `virtio-blk:` prefix is accepted
    #[arg(long, value_name = "PATH", help_heading = IMAGE,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub extra_drive: Vec<OsString>,

    /// Offer discard (TRIM) and unmapping write-zeroes to the guest's disks [default: yes]
    #[arg(long, value_name = "BOOL", help_heading = IMAGE,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub discard_disk: Vec<String>,

    /// Grow the --image file to BYTES (rounded up to 4096) if it is smaller
    #[arg(short = 'G', long, value_name = "BYTES", help_heading = IMAGE,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub grow_image: Vec<String>,

    /// Run on a throw-away snapshot of the image or directory (not supported yet)
    #[arg(short = 'x', long, help_heading = IMAGE)]
    pub ephemeral: bool,

    /// Kernel image to boot directly
    #[arg(long, value_name = "PATH", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub linux: Vec<OsString>,

    /// Initrd for direct kernel boot; may be repeated, loaded in order
    #[arg(long, value_name = "PATH", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub initrd: Vec<OsString>,

    /// Show the guest in a graphical window
    #[arg(long, help_heading = HOST)]
    pub qemu_gui: bool,

    /// The terminal's part: interactive (raw, every key to the guest), read-only (output
    /// only), native (a transparent pipe; Ctrl-a x ends the VM), headless (no console) or gui
    /// [default: interactive]
    #[arg(long, value_name = "MODE", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub console: Vec<String>,

    /// The guest's console device: virtio (hvc0) or serial (a 16550 UART, ttyS0)
    /// [default: virtio]
    #[arg(long, value_name = "TRANSPORT", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub console_transport: Vec<String>,

    /// Connect the guest to the host through a TAP device (vt-NAME; needs CAP_NET_ADMIN)
    #[arg(short, long, help_heading = HOST, overrides_with = "network_user_mode")]
    pub network_tap: bool,

    /// Give the guest user-mode (NAT) networking through passt
    #[arg(long, help_heading = HOST, overrides_with = "network_tap")]
    pub network_user_mode: bool,

    /// Firmware: auto, uefi, none, a JSON firmware description (absolute or ./ path), list
    /// (the descriptions found) or describe (the one that would be used) [default: auto]
    #[arg(long, value_name = "auto|uefi|bios|none|PATH|list|describe", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub firmware: Vec<OsString>,

    /// Firmware features to require (F), exclude (~F), forget ("") or list
    /// [default: ~enrolled-keys]
    #[arg(long, value_name = "FEATURE,...|list", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub firmware_features: Vec<OsString>,

    /// Whether to pick firmware with Secure Boot support [default: auto]
    #[arg(long, value_name = "BOOL", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub secure_boot: Vec<OsString>,

    /// EFI variable store template [default: the firmware description's]
    #[arg(long, value_name = "PATH", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub efi_nvram_template: Vec<OsString>,

    /// Where to keep the EFI variables: beside the image (auto), nowhere (off) or in PATH
    /// [default: auto]
    #[arg(long, value_name = "PATH|auto|off", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub efi_nvram_state: Vec<OsString>,

    /// The interactive console's background tint: an ANSI SGR color (e.g. 48;2;12;51;19), or
    /// empty for none [default: none]
    #[arg(long, value_name = "COLOR", help_heading = HOST,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub background: Vec<String>,

    /// Generate an SSH key pair in the run directory and pass its public key to the guest's
    /// sshd on vsock [default: yes]
    #[arg(long, value_name = "BOOL", help_heading = INTEGRATION,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub pass_ssh_key: Vec<String>,

    /// The type of the SSH key --pass-ssh-key generates (ecdsa, ecdsa-sk, ed25519, ed25519-sk,
    /// rsa) [default: ed25519]
    #[arg(long, value_name = "TYPE", help_heading = INTEGRATION,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub ssh_key_type: Vec<String>,

    /// Forward the guest's journal to FILE (ending in .journal) or DIR on the host, through
    /// systemd-journal-remote
    #[arg(long, value_name = "FILE|DIR", help_heading = INTEGRATION,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub forward_journal: Vec<OsString>,

    /// Register the VM with systemd-machined while it runs (auto: when there is a system
    /// bus and rvmspawn runs as root, failures ignored) [default: auto]
    #[arg(long, value_name = "BOOL|auto", help_heading = INTEGRATION,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub register: Vec<String>,

    /// Do not run in a transient scope unit (rvmspawn never creates one; machined files the
    /// VM under the unit rvmspawn runs in)
    #[arg(long, help_heading = PROPERTIES)]
    pub keep_unit: bool,

    /// The slice of the VM's scope unit (not supported: rvmspawn creates no unit)
    #[arg(short = 'S', long, value_name = "SLICE", help_heading = PROPERTIES,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub slice: Vec<String>,

    /// A property of the VM's scope unit (not supported: rvmspawn creates no unit)
    #[arg(long, value_name = "NAME=VALUE", help_heading = PROPERTIES,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub property: Vec<String>,

    /// Talk to the system service manager and machined (not supported)
    #[arg(long, help_heading = PROPERTIES)]
    pub system: bool,

    /// Talk to the user's service manager and machined (not supported)
    #[arg(long, help_heading = PROPERTIES)]
    pub user: bool,

    /// Name of the virtual machine
    #[arg(short = 'M', long, value_name = "NAME", help_heading = IDENTITY,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub machine: Vec<String>,

    /// The SMBIOS system UUID (32 hex digits, or 8-4-4-4-12) [default: derived from the name]
    #[arg(long, value_name = "UUID", help_heading = IDENTITY,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub uuid: Vec<String>,

    /// Pass an arbitrary SMBIOS type 11 (OEM) string to the guest
    #[arg(short = 's', long, value_name = "STRING", help_heading = IDENTITY,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub smbios11: Vec<OsString>,

    /// Map guest UIDs/GIDs from 0 up onto host IDs from UID_SHIFT on (--directory only)
    #[arg(long, value_name = "UID_SHIFT[:UID_RANGE]", help_heading = USERNS,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub private_users: Vec<String>,

    /// Share a host directory with the guest; `\:` escapes a colon
    #[arg(long, value_name = "PATH[:PATH]", help_heading = MOUNTS,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub bind: Vec<OsString>,

    /// Like --bind, but read-only
    #[arg(long, value_name = "PATH[:PATH]", help_heading = MOUNTS,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub bind_ro: Vec<OsString>,

    /// Pass a credential read from a file, or one of our own credentials
    #[arg(long, value_name = "ID:PATH", help_heading = CREDENTIALS,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub load_credential: Vec<OsString>,

    /// Pass a credential given literally, with C escapes (\n, \x00)
    #[arg(long, value_name = "ID:VALUE", help_heading = CREDENTIALS,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub set_credential: Vec<OsString>,

    /// Extra kernel command-line arguments (after all options)
    #[arg(value_name = "ARGS", trailing_var_arg = true)]
    pub kernel_args: Vec<String>,

    /// --bind and --bind-ro in command-line order, which decides mount order.
    #[arg(skip)]
    pub binds: Vec<(Mount, OsString)>,

    /// --load-credential and --set-credential in command-line order, so that a duplicate
    /// ID is blamed on its second occurrence.
    #[arg(skip)]
    pub credentials: Vec<(CredentialArg, OsString)>,

    /// --firmware, --firmware-features and --secure-boot in command-line order: the feature
    /// options add to and remove from the same sets, and `list` acts where it appears.
    #[arg(skip)]
    pub firmware_options: Vec<(FirmwareOption, OsString)>,
}

/// Which of the two bind options a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mount {
    ReadWrite,
    ReadOnly,
}

/// Which of the firmware options a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareOption {
    Firmware,
    Features,
    SecureBoot,
}

/// Which of the two credential options a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialArg {
    Load,
    Set,
}

impl Args {
    /// Parses a full argv (program name first).
    pub fn try_parse_from<I, T>(argv: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Args::command().try_get_matches_from(argv)?;
        let mut args = Args::from_arg_matches(&matches)?;
        args.binds = in_order(
            &matches,
            &[("bind", Mount::ReadWrite), ("bind_ro", Mount::ReadOnly)],
        );
        args.credentials = in_order(
            &matches,
            &[
                ("load_credential", CredentialArg::Load),
                ("set_credential", CredentialArg::Set),
            ],
        );
        // --qemu-gui is --console=gui (vmspawn v256): the later of the two wins.
        if let Some(gui_at) = matches.index_of("qemu_gui").filter(|_| args.qemu_gui) {
            let console_at = matches
                .indices_of("console")
                .and_then(|mut i| i.next_back());
            if console_at.is_none_or(|c| c < gui_at) {
                args.console.push("gui".into());
            }
        }
        args.firmware_options = in_order(
            &matches,
            &[
                ("firmware", FirmwareOption::Firmware),
                ("firmware_features", FirmwareOption::Features),
                ("secure_boot", FirmwareOption::SecureBoot),
            ],
        );
        Ok(args)
    }
}

/// Merges the occurrences of several options by their position on the command line.
fn in_order<K: Copy>(matches: &ArgMatches, ids: &[(&str, K)]) -> Vec<(K, OsString)> {
    let mut all = Vec::new();
    for &(id, kind) in ids {
        let (Some(indices), Some(values)) = (matches.indices_of(id), matches.get_many(id)) else {
            continue;
        };
        for (index, value) in indices.zip(values) {
            let value: &OsString = value;
            all.push((index, kind, value.clone()));
        }
    }
    all.sort_by_key(|&(index, _, _)| index);
    all.into_iter()
        .map(|(_, kind, value)| (kind, value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_is_consistent() {
        // clap's own consistency checks panic on a bad definition.
        Args::command().debug_assert();
        // And the command is the one the man page describes.
        let c = Args::command();
        assert!(
            c.get_arguments()
                .any(|a| a.get_long() == Some("linux") && a.get_short().is_none())
        );
        assert!(c.get_arguments().any(|a| a.get_long() == Some("quiet")));
    }
}
