//! The host side of `--network-tap`: the TAP device's name and the guest's MAC address, derived
//! from the machine name exactly as systemd-vmspawn derives them, and the TAP device itself.
//!
//! The TAP is created non-persistent by opening `/dev/net/tun`: it exists while one of its file
//! descriptors is open, so it vanishes on every exit of rvmspawn, SIGKILL included. Like
//! vmspawn's QEMU, rvmspawn neither brings it up nor gives it an address: systemd-networkd does
//! that for `vt-*` links (`80-vm-vt.network`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use devices::virtio::net::NetBackend;
use devices::virtio::net::stream::StreamBackend;
use devices::virtio::net::tap::{IFNAMSIZ, IfReq, TapBackend};

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};

/// The index of the interface called `name`, if there is one.
pub fn ifindex(name: &str) -> Option<i32> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: `cname` is a NUL-terminated string that lives for the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    i32::try_from(index).ok().filter(|i| *i > 0)
}

/// systemd's `SHORTEN_IFNAME_HASH_KEY` (`net_shorten_ifname()`).
const SHORTEN_IFNAME_KEY: [u8; 16] = [
    0xe1, 0x90, 0xa4, 0x04, 0xa8, 0xef, 0x4b, 0x51, 0x8c, 0xcc, 0xc3, 0x3a, 0x9f, 0x11, 0xfc, 0xa2,
];
/// vmspawn's `VM_TAP_HASH_KEY` for the guest's MAC address.
const VM_TAP_KEY: [u8; 16] = [
    0x01, 0xd0, 0xc6, 0x4c, 0x2b, 0xdf, 0x24, 0xfb, 0xc0, 0xf8, 0xb2, 0x09, 0x7d, 0x59, 0xb2, 0x93,
];
/// The URL-safe base64 alphabet (RFC 4648 §5).
const URLSAFE_BASE64: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// The TAP's virtio-net header: `struct virtio_net_hdr_mrg_rxbuf` (also virtio 1.x's header).
pub const VNET_HDR_LEN: i32 = 12;
/// The clone device that creates TUN/TAP interfaces.
const TUN_DEVICE: &str = "/dev/net/tun";

/// Errors from creating or configuring the TAP device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No CAP_NET_ADMIN (vmspawn's own message).
    #[error("--network-tap requires root privileges, refusing.")]
    NoPrivilege,
    /// An interface of that name already exists.
    #[error("network interface {0} already exists")]
    Busy(String),
    /// The name cannot be an interface name.
    #[error("invalid network interface name {0:?}")]
    BadName(String),
    /// A step of creating or configuring the TAP failed.
    #[error("TAP device {name}: {what}: {err}")]
    Tap {
        /// The interface.
        name: String,
        /// The step that failed.
        what: &'static str,
        /// Why.
        err: io::Error,
    },
}

impl NetError {
    /// The errno for the process exit code.
    pub fn errno(&self) -> i32 {
        match self {
            NetError::NoPrivilege => libc::EPERM,
            NetError::Busy(_) => libc::EBUSY,
            NetError::BadName(_) => libc::EINVAL,
            NetError::Tap { err, .. } => err.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// SipHash-2-4 of the concatenated `parts` under `key`, with the key read as two little-endian
/// words as systemd's `siphash24()` reads it.
pub fn siphash24(key: &[u8; 16], parts: &[&[u8]]) -> u64 {
    let mut k0 = [0u8; 8];
    let mut k1 = [0u8; 8];
    k0.copy_from_slice(&key[..8]);
    k1.copy_from_slice(&key[8..]);
    #[allow(
        deprecated,
        reason = "std's SipHasher is SipHash-2-4, exactly the function needed"
    )]
    let mut h = std::hash::SipHasher::new_with_keys(u64::from_le_bytes(k0), u64::from_le_bytes(k1));
    for p in parts {
        // `Hasher::write` feeds the bytes alone (no length prefix), so several parts hash as
        // their concatenation.
        std::hash::Hasher::write(&mut h, p);
    }
    std::hash::Hasher::finish(&h)
}

/// The TAP name vmspawn uses for `machine`: `vt-` + the machine name, shortened as systemd's
/// `net_shorten_ifname()` does when it does not fit an interface name (15 bytes): the first 11
/// bytes and four URL-safe base64 characters of a hash of the whole name. The second value is
/// vmspawn's warning when the name was shortened.
pub fn tap_name(machine: &str) -> (String, Option<String>) {
    let full = format!("vt-{machine}");
    if full.len() < IFNAMSIZ {
        return (full, None);
    }
    let h = siphash24(&SHORTEN_IFNAME_KEY, &[full.as_bytes()]);
    // Machine names are hostnames (ASCII); for anything else, cut at a character boundary.
    let mut keep = IFNAMSIZ - 5;
    while !full.is_char_boundary(keep) {
        keep -= 1;
    }
    let mut short = full[..keep].to_string();
    for shift in [18, 12, 6, 0] {
        short.push(char::from(URLSAFE_BASE64[((h >> shift) & 63) as usize]));
    }
    let warning = format!(
        "Network interface name '{full}' has been changed to '{short}' to fit length constraints."
    );
    (short, Some(warning))
}

/// The guest's MAC address as vmspawn derives it (`net_generate_mac()` with `VM_TAP_HASH_KEY`):
/// the first six bytes (little-endian) of SipHash-2-4 over the host's machine ID followed by
/// the machine name, made a unicast, locally administered address.
pub fn guest_mac(machine_id: &[u8; 16], machine: &str) -> [u8; 6] {
    let h = siphash24(&VM_TAP_KEY, &[machine_id, machine.as_bytes()]).to_le_bytes();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&h[..6]);
    mac[0] &= 0xfe;
    mac[0] |= 0x02;
    mac
}

/// Parse a MAC address as systemd's `parse_ether_addr()` does (`$SYSTEMD_VMSPAWN_NETWORK_MAC`):
/// six bytes as `xx:xx:xx:xx:xx:xx` or `xx-xx-xx-xx-xx-xx` (one or two hex digits each), or
/// three 16-bit groups `xxxx.xxxx.xxxx` (one to four hex digits each).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    // The first character that is not a hex digit is the separator; it fixes the format.
    let sep = s.chars().find(|c| !c.is_ascii_hexdigit())?;
    let field_bytes = match sep {
        ':' | '-' => 1,
        '.' => 2,
        _ => return None,
    };
    let fields: Vec<&str> = s.split(sep).collect();
    if fields.len() != 6 / field_bytes {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, f) in fields.iter().enumerate() {
        if f.is_empty() || f.len() > 2 * field_bytes || !f.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let v = u16::from_str_radix(f, 16).ok()?;
        if field_bytes == 1 {
            mac[i] = u8::try_from(v).ok()?;
        } else {
            mac[2 * i..2 * i + 2].copy_from_slice(&v.to_be_bytes());
        }
    }
    Some(mac)
}

/// Format a MAC address as `xx:xx:xx:xx:xx:xx`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The host's machine ID from `path` (normally `/etc/machine-id`): 32 hex digits, optionally
/// followed by a newline, not all zero.
pub fn read_machine_id(path: &Path) -> io::Result<[u8; 16]> {
    let text = std::fs::read_to_string(path)?;
    parse_machine_id(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} holds no valid machine ID", path.display()),
        )
    })
}

fn parse_machine_id(text: &str) -> Option<[u8; 16]> {
    let hex = text.strip_suffix('\n').unwrap_or(text);
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    (id != [0; 16]).then_some(id)
}

/// A non-persistent TAP device with one file descriptor per queue pair; it disappears when the
/// last of them closes.
#[derive(Debug)]
pub struct Tap {
    name: String,
    queues: Vec<File>,
}

impl Tap {
    /// Create TAP `name` with `queues` queue pairs (multi-queue when more than one), a 12-byte
    /// virtio-net header and no offloads yet. The device is neither brought up nor addressed.
    pub fn create(name: &str, queues: usize) -> Result<Tap, NetError> {
        if name.is_empty()
            || name.len() >= IFNAMSIZ
            || name
                .bytes()
                .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
        {
            return Err(NetError::BadName(name.to_string()));
        }
        let queues = queues.max(1);
        let fail = |what: &'static str, err: io::Error| NetError::Tap {
            name: name.to_string(),
            what,
            err,
        };
        // An existing interface of that name would be joined (a persistent TAP) or refused with
        // a puzzling error (another kind of link): refuse it plainly.
        let cname = std::ffi::CString::new(name).map_err(|_| NetError::BadName(name.into()))?;
        // SAFETY: `cname` is a NUL-terminated string that lives for the call.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } != 0 {
            return Err(NetError::Busy(name.to_string()));
        }
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut files = Vec::with_capacity(queues);
        for _ in 0..queues {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
                .open(TUN_DEVICE)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::EPERM | libc::EACCES) => NetError::NoPrivilege,
                    _ => fail("open /dev/net/tun", e),
                })?;
            let mut req = IfReq::new(name.as_bytes(), flags);
            // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `IfReq` has its layout
            // (40 bytes) and lives for the call.
            let r = unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF as _, &mut req) };
            if r < 0 {
                let e = io::Error::last_os_error();
                return Err(match e.raw_os_error() {
                    Some(libc::EPERM | libc::EACCES) => NetError::NoPrivilege,
                    Some(libc::EBUSY) => NetError::Busy(name.to_string()),
                    _ => fail("TUNSETIFF", e),
                });
            }
            let hdr: libc::c_int = VNET_HDR_LEN;
            // SAFETY: TUNSETVNETHDRSZ reads one int, which lives for the call.
            let r = unsafe { ioctl_with_ref(&file, libc::TUNSETVNETHDRSZ as _, &hdr) };
            if r < 0 {
                return Err(fail("TUNSETVNETHDRSZ", io::Error::last_os_error()));
            }
            files.push(file);
        }
        Ok(Tap {
            name: name.to_string(),
            queues: files,
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Duplicates of the queues' file descriptors, for a device (the TAP lives as long as any
    /// of them, or this `Tap`, is open).
    pub fn clone_fds(&self) -> io::Result<Vec<OwnedFd>> {
        self.queues
            .iter()
            .map(|f| f.try_clone().map(OwnedFd::from))
            .collect()
    }
}

/// The kernel's virtio-net back end.
const VHOST_NET: &str = "/dev/vhost-net";
/// Where the host's machine ID is, for the guest's MAC.
const MACHINE_ID: &str = "/etc/machine-id";

/// The guest's NIC as set up for the whole run: the TAP (or passt's socket) outlives guest
/// reboots, so the guest keeps its link and MAC; each boot builds a new device on it.
pub enum NetSetup {
    /// vhost-net moves the frames between the rings and the TAP.
    Vhost {
        /// The open `/dev/vhost-net`.
        vhost: Arc<File>,
        /// The TAP, one queue pair.
        tap: Tap,
        /// The guest's MAC.
        mac: [u8; 6],
    },
    /// rvmspawn's own virtio-net device, one back end per queue pair.
    User {
        /// The back ends (TAP queues, or passt's socket).
        backends: Vec<Arc<dyn NetBackend>>,
        /// The guest's MAC.
        mac: [u8; 6],
        /// The TAP the back ends are queues of, if any (kept for its name).
        tap: Option<Tap>,
    },
}

impl std::fmt::Debug for NetSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetSetup::Vhost { tap, mac, .. } => f
                .debug_struct("Vhost")
                .field("tap", &tap.name())
                .field("mac", &format_mac(mac))
                .finish(),
            NetSetup::User { backends, mac, tap } => f
                .debug_struct("User")
                .field("pairs", &backends.len())
                .field("tap", &tap.as_ref().map(Tap::name))
                .field("mac", &format_mac(mac))
                .finish(),
        }
    }
}

fn tap_error(e: NetError) -> crate::Error {
    let errno = e.errno();
    crate::Error::Network(e.to_string(), errno)
}

/// Set up `--network-tap` for machine `name` with `vcpus` vCPUs: the TAP named as vmspawn
/// names it, the MAC (`mac`, or derived as vmspawn derives it), and vhost-net when
/// `/dev/vhost-net` opens, else rvmspawn's device with one queue pair per vCPU (at most 16).
pub fn setup_tap(
    name: &str,
    vcpus: u32,
    mac: Option<[u8; 6]>,
    quiet: bool,
) -> Result<NetSetup, crate::Error> {
    let (tap_name, warning) = tap_name(name);
    if let Some(w) = warning {
        status!("{w}");
    }
    let mac = match mac {
        Some(m) => m,
        None => {
            let id = read_machine_id(Path::new(MACHINE_ID)).map_err(|e| {
                crate::Error::Network(
                    format!("Failed to generate predictable MAC address for VM side: {e}"),
                    e.raw_os_error().unwrap_or(libc::EINVAL),
                )
            })?;
            guest_mac(&id, name)
        }
    };
    let vhost = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(VHOST_NET);
    match vhost {
        Ok(vhost) => {
            let tap = Tap::create(&tap_name, 1).map_err(tap_error)?;
            if !quiet {
                status!(
                    "Guest network: TAP {tap_name}, guest MAC {}, served by vhost-net.",
                    format_mac(&mac)
                );
            }
            Ok(NetSetup::Vhost {
                vhost: Arc::new(vhost),
                tap,
                mac,
            })
        }
        Err(why) => {
            let pairs = (vcpus as usize).clamp(1, devices::virtio::net::MAX_QUEUE_PAIRS);
            let tap = Tap::create(&tap_name, pairs).map_err(tap_error)?;
            let backends = tap
                .clone_fds()
                .and_then(|fds| {
                    fds.into_iter()
                        .map(|fd| TapBackend::new(fd).map(|b| Arc::new(b) as Arc<dyn NetBackend>))
                        .collect::<io::Result<Vec<_>>>()
                })
                .map_err(|e| {
                    tap_error(NetError::Tap {
                        name: tap_name.clone(),
                        what: "queue descriptors",
                        err: e,
                    })
                })?;
            if !quiet {
                status!(
                    "Guest network: TAP {tap_name}, guest MAC {}, served by rvmspawn with {pairs} \
                     queue pair{} (no {VHOST_NET}: {why}).",
                    format_mac(&mac),
                    if pairs == 1 { "" } else { "s" }
                );
            }
            Ok(NetSetup::User {
                backends,
                mac,
                tap: Some(tap),
            })
        }
    }
}

/// Set up `--network-user-mode`: passt on a socket pair, and the device's back end on our end.
pub fn setup_user_mode(quiet: bool) -> Result<(NetSetup, crate::helper::Helper), crate::Error> {
    let binary = crate::passt::find_passt()?;
    let (helper, sock) = crate::passt::start(&binary)?;
    let backend = StreamBackend::new(sock).map_err(|e| {
        crate::Error::Helper(
            format!("Failed to set up the socket to passt: {e}"),
            e.raw_os_error().unwrap_or(libc::EIO),
        )
    })?;
    if !quiet {
        status!(
            "Guest network: user mode through passt (guest {}/{}, gateway {}, DNS {}).",
            crate::passt::GUEST_ADDRESS,
            crate::passt::PREFIX_LEN,
            crate::passt::GATEWAY,
            crate::passt::DNS
        );
    }
    Ok((
        NetSetup::User {
            backends: vec![Arc::new(backend)],
            mac: crate::passt::GUEST_MAC,
            tap: None,
        },
        helper,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_matches_the_reference_vector() {
        // The SipHash paper's test vector: key 00..0f, message 00..0e.
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(&key, &[&msg]), 0xa129_ca61_49be_45e5);
        // Parts hash as their concatenation.
        assert_eq!(
            siphash24(&key, &[&msg[..4], &msg[4..]]),
            0xa129_ca61_49be_45e5
        );
    }

    #[test]
    fn short_names_are_kept() {
        assert_eq!(tap_name("vm"), ("vt-vm".to_string(), None));
        // 15 bytes still fit.
        assert_eq!(tap_name("0123456789ab").0, "vt-0123456789ab");
        assert!(tap_name("0123456789ab").1.is_none());
    }

    #[test]
    fn long_names_are_shortened_as_systemd_does() {
        // Expected values from an independent SipHash-2-4 (checked against the paper's vector)
        // applied per net_shorten_ifname(): hash of the whole "vt-..." name, first 11 bytes,
        // then urlsafe_base64char(h >> 18, h >> 12, h >> 6, h).
        let (name, warning) = tap_name("0123456789abc");
        assert_eq!(name, "vt-01234567aB4y");
        assert_eq!(
            warning.as_deref(),
            Some(
                "Network interface name 'vt-0123456789abc' has been changed to \
                 'vt-01234567aB4y' to fit length constraints."
            )
        );
        let (name, _) = tap_name("averyveryverylongmachine");
        assert_eq!(name, "vt-averyverexXi");
        assert_eq!(name.len(), 15);
    }

    #[test]
    fn the_mac_is_derived_from_machine_id_and_name() {
        let id = parse_machine_id("0123456789abcdef0123456789abcdef\n").unwrap();
        // From the same independent SipHash-2-4: h = 0xec23045c4155e57f, little-endian bytes
        // 7f e5 55 41 5c 04, first octet made unicast and local: 7e.
        assert_eq!(format_mac(&guest_mac(&id, "machine")), "7e:e5:55:41:5c:04");
        let other = guest_mac(&id, "machine2");
        assert_ne!(other, guest_mac(&id, "machine"));
        assert_eq!(other[0] & 0x03, 0x02);
    }

    #[test]
    fn macs_parse_in_systemd_formats() {
        let m = [0x02, 0xab, 0x0c, 0xd0, 0x01, 0xff];
        assert_eq!(parse_mac("02:ab:0c:d0:01:ff"), Some(m));
        assert_eq!(parse_mac("02-AB-0C-D0-01-FF"), Some(m));
        assert_eq!(parse_mac("02ab.0cd0.01ff"), Some(m));
        assert_eq!(parse_mac("2:ab:c:d0:1:ff"), Some(m));
        for bad in [
            "",
            "02:ab:0c:d0:01",
            "02:ab:0c:d0:01:ff:",
            "02:ab:0c:d0:01:ff:00",
            "02:ab-0c:d0:01:ff",
            "02:ab:0c:d0:01:fff",
            "02:ab:0c::01:ff",
            "0g:ab:0c:d0:01:ff",
            "02ab.0cd0",
            "02ab0cd001ff",
            " 02:ab:0c:d0:01:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn machine_ids_must_be_32_hex_digits() {
        let id = parse_machine_id("3d1219c7c4c5404aaa1f6d2a48adfda4\n").unwrap();
        assert_eq!(id[0], 0x3d);
        assert_eq!(id[15], 0xa4);
        assert!(parse_machine_id("3d1219c7c4c5404aaa1f6d2a48adfda4").is_some());
        assert!(parse_machine_id("3d1219c7c4c5404aaa1f6d2a48adfda").is_none());
        assert!(parse_machine_id("3d1219c7c4c5404aaa1f6d2a48adfdaz\n").is_none());
        assert!(parse_machine_id("00000000000000000000000000000000\n").is_none());
        assert!(parse_machine_id("3d1219c7c4c5404aaa1f6d2a48adfda4\n\n").is_none());
        let missing = read_machine_id(Path::new("/nonexistent/machine-id")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::offset_of!(IfReq, flags), 16);
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for bad in ["", "0123456789abcdef", "a/b", "a b", "a:b"] {
            let e = Tap::create(bad, 1).unwrap_err();
            assert!(matches!(e, NetError::BadName(_)), "{bad:?}: {e}");
            assert_eq!(e.errno(), libc::EINVAL);
        }
        assert_eq!(NetError::NoPrivilege.errno(), libc::EPERM);
        assert_eq!(
            NetError::NoPrivilege.to_string(),
            "--network-tap requires root privileges, refusing."
        );
    }

    fn link_exists(name: &str) -> bool {
        Path::new("/sys/class/net").join(name).exists()
    }

    #[test]
    fn a_tap_exists_while_open_and_vanishes_when_closed() {
        if !Path::new(TUN_DEVICE).exists() {
            eprintln!("note: {TUN_DEVICE} is missing; TAP creation not tested");
            return;
        }
        let name = format!("rvt{}", std::process::id());
        let tap = match Tap::create(&name, 1) {
            Err(NetError::NoPrivilege) => {
                eprintln!("note: no CAP_NET_ADMIN; TAP creation not tested");
                return;
            }
            r => r.unwrap(),
        };
        assert_eq!(tap.name(), name);
        assert!(link_exists(&name));
        // The name is taken while the TAP lives.
        let again = Tap::create(&name, 1).unwrap_err();
        assert_eq!(again.errno(), libc::EBUSY, "{again}");
        // A duplicate descriptor keeps it alive; the last close removes it.
        let fds = tap.clone_fds().unwrap();
        drop(tap);
        assert!(link_exists(&name));
        drop(fds);
        assert!(!link_exists(&name));
    }

    #[test]
    fn a_multi_queue_tap_has_one_descriptor_per_queue() {
        if !Path::new(TUN_DEVICE).exists() {
            eprintln!("note: {TUN_DEVICE} is missing; TAP creation not tested");
            return;
        }
        let name = format!("rvq{}", std::process::id());
        let tap = match Tap::create(&name, 3) {
            Err(NetError::NoPrivilege) => {
                eprintln!("note: no CAP_NET_ADMIN; TAP creation not tested");
                return;
            }
            r => r.unwrap(),
        };
        assert_eq!(tap.clone_fds().unwrap().len(), 3);
        assert!(link_exists(&name));
        drop(tap);
        assert!(!link_exists(&name));
    }
}
