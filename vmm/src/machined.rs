//! `--register=`: the VM registered with systemd-machined for as long as it runs, so that
//! `machinectl list` shows it (name, UUID, class `vm`, leader PID, the `-D` directory, the TAP,
//! and on machined versions that take them the vsock CID and the ssh address and key).
//!
//! The D-Bus exchange runs in a process of its own, the *registrar*: rvmspawn itself runs again
//! (`/proc/self/exe` with [`REGISTRAR_ENV`] set), registers through `zbus` and then waits. So no
//! D-Bus connection, executor thread or reactor thread lives inside the VMM, whose threads
//! each run under their own seccomp filter; and the machine is unregistered however rvmspawn
//! ends, even by SIGKILL. The registrar holds the read end of a pipe (descriptor 3) whose
//! write end only rvmspawn has: end of file on it (rvmspawn dropped [`Registered`], or died),
//! SIGTERM (the helpers' parent-death signal) or SIGHUP all end in `UnregisterMachine`.
//!
//! As in systemd-vmspawn (`machine-register.c`), `RegisterMachineEx` is tried first and
//! `RegisterMachineWithNetwork` is the fallback for a machined without it (before systemd 258).
//! machined puts the machine in the unit of its leader (rvmspawn's own scope or service), as
//! vmspawn's `--keep-unit` does: rvmspawn never asks the service manager for a scope.

use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use zbus::DBusError;

use crate::Error;
use crate::helper::Helper;

/// Set (to [`REGISTRAR_ROLE`]) in the registrar's environment: `main` then runs
/// [`registrar_main`] instead of a VM.
pub const REGISTRAR_ENV: &str = "RVMSPAWN_INTERNAL_ROLE";
/// The value of [`REGISTRAR_ENV`] for the registrar.
pub const REGISTRAR_ROLE: &str = "machined-registrar";

/// The system bus socket when `$DBUS_SYSTEM_BUS_ADDRESS` is not set (D-Bus's default).
const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";

/// How long rvmspawn waits for the registrar's answer, and at exit for it to unregister.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// `--register=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterMode {
    /// `no`.
    No,
    /// `auto` (the default): register when there is a system bus and rvmspawn runs as root;
    /// a failure is a notice.
    Auto,
    /// `yes`: a failure ends the run.
    Yes,
}

/// What machined is told about the VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    pub uuid: [u8; 16],
    /// The `-D` tree.
    pub root_directory: Option<PathBuf>,
    /// The TAP's interface index (`--network-tap`).
    pub ifindex: Option<i32>,
    pub vsock_cid: Option<u32>,
    /// How ssh reaches the guest (`vsock/CID`, `vsock-mux/PATH`).
    pub ssh_address: Option<String>,
    pub ssh_private_key: Option<PathBuf>,
}

impl Registration {
    /// The registrar's arguments (`--key=value`, paths as they are).
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![
            format!("--name={}", self.name).into(),
            format!("--uuid={}", hex(&self.uuid)).into(),
        ];
        if let Some(d) = &self.root_directory {
            let mut a = std::ffi::OsString::from("--root-directory=");
            a.push(d);
            args.push(a);
        }
        if let Some(i) = self.ifindex {
            args.push(format!("--ifindex={i}").into());
        }
        if let Some(c) = self.vsock_cid {
            args.push(format!("--vsock-cid={c}").into());
        }
        if let Some(a) = &self.ssh_address {
            args.push(format!("--ssh-address={a}").into());
        }
        if let Some(k) = &self.ssh_private_key {
            let mut a = std::ffi::OsString::from("--ssh-private-key=");
            a.push(k);
            args.push(a);
        }
        args
    }

    /// The inverse of [`Registration::to_args`].
    fn from_args(args: &[std::ffi::OsString]) -> Result<Registration, String> {
        use std::os::unix::ffi::OsStrExt;
        let mut r = Registration::default();
        let mut have_uuid = false;
        for arg in args {
            let bytes = arg.as_bytes();
            let Some(eq) = bytes.iter().position(|b| *b == b'=') else {
                return Err(format!("bad argument {arg:?}"));
            };
            let value = std::ffi::OsStr::from_bytes(&bytes[eq + 1..]);
            let text = || {
                value
                    .to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("bad argument {arg:?}"))
            };
            let number = |what| {
                text()?
                    .parse::<i64>()
                    .map_err(|_| format!("bad {what} in {arg:?}"))
            };
            match &bytes[..eq] {
                b"--name" => r.name = text()?,
                b"--uuid" => {
                    r.uuid = unhex(&text()?).ok_or_else(|| format!("bad argument {arg:?}"))?;
                    have_uuid = true;
                }
                b"--root-directory" => r.root_directory = Some(PathBuf::from(value)),
                b"--ifindex" => {
                    r.ifindex = Some(
                        i32::try_from(number("ifindex")?).map_err(|_| format!("bad {arg:?}"))?,
                    )
                }
                b"--vsock-cid" => {
                    r.vsock_cid =
                        Some(u32::try_from(number("CID")?).map_err(|_| format!("bad {arg:?}"))?)
                }
                b"--ssh-address" => r.ssh_address = Some(text()?),
                b"--ssh-private-key" => r.ssh_private_key = Some(PathBuf::from(value)),
                _ => return Err(format!("unknown argument {arg:?}")),
            }
        }
        if r.name.is_empty() || !have_uuid {
            return Err("a name and a UUID are needed".into());
        }
        Ok(r)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    if s.len() != 32 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether `auto` tries at all: a system bus to talk to, and root (machined asks polkit about
/// anyone else, which a VM launcher must not wait for; vmspawn would use the user's own
/// machined instead, which rvmspawn does not support).
fn auto_applies(bus_address: Option<&std::ffi::OsStr>, bus_socket: &Path, euid: u32) -> bool {
    euid == 0 && (bus_address.is_some_and(|a| !a.is_empty()) || bus_socket.exists())
}

/// The VM's registration, for as long as this lives: dropping it has the registrar unregister
/// the machine and waits (boundedly) for that.
#[derive(Debug)]
pub struct Registered {
    /// The write end of the registrar's lifeline; closing it is the signal to unregister.
    lifeline: Option<OwnedFd>,
    helper: Helper,
}

impl Drop for Registered {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        // Unregistered and gone; else the helper's own drop stops it.
        let _ = self.helper.exited_within(UNREGISTER_TIMEOUT);
    }
}

/// Register the VM with machined as `mode` says. `None`: not registered (`no`, `auto` without
/// a system bus or not as root, or `auto` and machined refused, which is then a notice).
pub fn register(
    reg: &Registration,
    mode: RegisterMode,
    quiet: bool,
) -> Result<Option<Registered>, Error> {
    let address = std::env::var_os("DBUS_SYSTEM_BUS_ADDRESS");
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    match mode {
        RegisterMode::No => return Ok(None),
        RegisterMode::Auto
            if !auto_applies(address.as_deref(), Path::new(SYSTEM_BUS_SOCKET), euid) =>
        {
            return Ok(None);
        }
        _ => {}
    }
    match start(reg) {
        Ok(r) => Ok(Some(r)),
        Err((message, errno)) if mode == RegisterMode::Yes => Err(Error::Helper(
            format!("Failed to register machine with systemd-machined: {message}"),
            errno,
        )),
        Err((message, _)) => {
            if !quiet {
                status!("Failed to register machine with systemd-machined, ignoring: {message}");
            }
            Ok(None)
        }
    }
}

/// Start the registrar and wait for its answer.
fn start(reg: &Registration) -> Result<Registered, (String, i32)> {
    let io = |what: &str, e: std::io::Error| {
        (
            format!("{what}: {e}"),
            e.raw_os_error().unwrap_or(libc::EIO),
        )
    };
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io("pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors are new and owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut cmd = Command::new("/proc/self/exe");
    cmd.env(REGISTRAR_ENV, REGISTRAR_ROLE)
        .args(reg.to_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Not in the terminal's process group: a Ctrl-C is rvmspawn's to handle (a graceful
        // stop), not a reason to unregister a VM that is still running.
        .process_group(0);
    let mut helper = Helper::spawn(
        "the machined registrar".into(),
        cmd,
        Some((read_end, LIFELINE_FD)),
    )
    .map_err(|e| (e.to_string(), e.errno()))?;
    let stdout = helper
        .take_stdout()
        .ok_or_else(|| ("no answer pipe".to_owned(), libc::EIO))?;
    let mut p = libc::pollfd {
        fd: stdout.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(ANSWER_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    if unsafe { libc::poll(&mut p, 1, ms) } <= 0 {
        return Err((
            format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()),
            libc::ETIMEDOUT,
        ));
    }
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| io("reading the registrar's answer", e))?;
    match parse_answer(&line) {
        Ok(()) => Ok(Registered {
            lifeline: Some(write_end),
            helper,
        }),
        Err(e) => Err(e),
    }
}

/// The registrar's descriptor of its lifeline.
const LIFELINE_FD: RawFd = 3;

/// `ok`, or `error ERRNO MESSAGE`.
fn parse_answer(line: &str) -> Result<(), (String, i32)> {
    let line = line.trim_end();
    if line == "ok" {
        return Ok(());
    }
    let Some(rest) = line.strip_prefix("error ") else {
        return Err((
            if line.is_empty() {
                "the registrar ended without an answer".to_owned()
            } else {
                format!("unexpected answer {line:?}")
            },
            libc::EIO,
        ));
    };
    let (errno, message) = rest.split_once(' ').unwrap_or((rest, ""));
    Err((message.to_owned(), errno.parse().unwrap_or(libc::EIO)))
}

/// The errno sd-bus gives a D-Bus error name (`bus-error.c`'s table, for those machined sends),
/// so that `--register=yes` exits as vmspawn would.
fn errno_of(error_name: &str) -> i32 {
    match error_name {
        "org.freedesktop.DBus.Error.AccessDenied"
        | "org.freedesktop.DBus.Error.AuthFailed"
        | "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" => libc::EACCES,
        "org.freedesktop.DBus.Error.ServiceUnknown" => libc::EHOSTUNREACH,
        "org.freedesktop.DBus.Error.NameHasNoOwner" => libc::ENXIO,
        "org.freedesktop.DBus.Error.NoReply" | "org.freedesktop.DBus.Error.Timeout" => {
            libc::ETIMEDOUT
        }
        "org.freedesktop.DBus.Error.InvalidArgs" => libc::EINVAL,
        "org.freedesktop.DBus.Error.FileExists" => libc::EEXIST,
        "org.freedesktop.DBus.Error.UnknownMethod" => libc::EBADR,
        "org.freedesktop.DBus.Error.LimitsExceeded" => libc::ENOBUFS,
        // sd-bus services send a bare errno as System.Error.NAME (machined's "Failed to
        // determine unit of process" is System.Error.ENXIO).
        other => other
            .strip_prefix("System.Error.")
            .and_then(errno_named)
            .unwrap_or(libc::EIO),
    }
}

/// The errno called `name`, for those a machined may send.
fn errno_named(name: &str) -> Option<i32> {
    Some(match name {
        "EPERM" => libc::EPERM,
        "ENOENT" => libc::ENOENT,
        "ESRCH" => libc::ESRCH,
        "ENXIO" => libc::ENXIO,
        "ENOMEM" => libc::ENOMEM,
        "EACCES" => libc::EACCES,
        "EBUSY" => libc::EBUSY,
        "EEXIST" => libc::EEXIST,
        "EINVAL" => libc::EINVAL,
        "ENOSPC" => libc::ENOSPC,
        "ENOTSUP" | "EOPNOTSUPP" => libc::EOPNOTSUPP,
        "EHOSTDOWN" => libc::EHOSTDOWN,
        "ETIMEDOUT" => libc::ETIMEDOUT,
        "EUNATCH" => libc::EUNATCH,
        _ => return None,
    })
}

/// A zbus error as the registrar's answer: its message and an errno.
fn describe(e: &zbus::Error) -> (String, i32) {
    match e {
        zbus::Error::MethodError(name, message, _) => (
            format!(
                "{}{}",
                name.as_str(),
                message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            errno_of(name.as_str()),
        ),
        zbus::Error::FDO(f) => (f.to_string(), errno_of(f.name().as_str())),
        zbus::Error::InputOutput(io) => (
            format!("the system bus: {io}"),
            io.raw_os_error().unwrap_or(libc::EIO),
        ),
        other => (other.to_string(), libc::EIO),
    }
}

fn is_unknown_method(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::MethodError(name, _, _) => {
            name.as_str() == "org.freedesktop.DBus.Error.UnknownMethod"
        }
        zbus::Error::FDO(f) => matches!(**f, zbus::fdo::Error::UnknownMethod(_)),
        _ => false,
    }
}

const MACHINED: &str = "org.freedesktop.machine1";
const MACHINED_PATH: &str = "/org/freedesktop/machine1";
const MACHINED_MANAGER: &str = "org.freedesktop.machine1.Manager";

/// Register through `RegisterMachineEx`, else `RegisterMachineWithNetwork`. `leader` is
/// rvmspawn's PID and `leader_pidfd` a pidfd of it (what machined tracks it by when it can).
fn register_on(
    conn: &zbus::blocking::Connection,
    reg: &Registration,
    leader: u32,
    leader_pidfd: Option<&OwnedFd>,
) -> Result<(), zbus::Error> {
    use zbus::zvariant::Value;
    let path_text = |p: &Path| p.to_string_lossy().into_owned();
    let mut props: Vec<(&str, Value)> = vec![
        ("Id", Value::from(reg.uuid.to_vec())),
        ("Service", Value::from("rvmspawn")),
        ("Class", Value::from("vm")),
    ];
    if let Some(fd) = leader_pidfd {
        props.push(("LeaderPIDFD", Value::from(zbus::zvariant::Fd::from(fd))));
    }
    props.push(("LeaderPID", Value::from(leader)));
    if let Some(d) = &reg.root_directory {
        props.push(("RootDirectory", Value::from(path_text(d))));
    }
    if let Some(i) = reg.ifindex {
        props.push(("NetworkInterfaces", Value::from(vec![i])));
    }
    if let Some(c) = reg.vsock_cid {
        props.push(("VSockCID", Value::from(c)));
    }
    if let Some(a) = &reg.ssh_address {
        props.push(("SSHAddress", Value::from(a.as_str())));
    }
    if let Some(k) = &reg.ssh_private_key {
        props.push(("SSHPrivateKeyPath", Value::from(path_text(k))));
    }
    let ex = conn.call_method(
        Some(MACHINED),
        MACHINED_PATH,
        Some(MACHINED_MANAGER),
        "RegisterMachineEx",
        &(reg.name.as_str(), props),
    );
    match ex {
        Ok(_) => return Ok(()),
        Err(e) if !is_unknown_method(&e) => return Err(e),
        Err(_) => {}
    }
    let root = reg
        .root_directory
        .as_deref()
        .map(path_text)
        .unwrap_or_default();
    let ifindices: Vec<i32> = reg.ifindex.into_iter().collect();
    conn.call_method(
        Some(MACHINED),
        MACHINED_PATH,
        Some(MACHINED_MANAGER),
        "RegisterMachineWithNetwork",
        &(
            reg.name.as_str(),
            reg.uuid.to_vec(),
            "rvmspawn",
            "vm",
            leader,
            root.as_str(),
            ifindices,
        ),
    )
    .map(|_| ())
}

fn unregister_on(conn: &zbus::blocking::Connection, name: &str) -> Result<(), zbus::Error> {
    conn.call_method(
        Some(MACHINED),
        MACHINED_PATH,
        Some(MACHINED_MANAGER),
        "UnregisterMachine",
        &(name,),
    )
    .map(|_| ())
}

/// The registrar: register, answer on stdout, wait for the end of the lifeline or a
/// termination signal, unregister. Returns the process's exit status.
pub fn registrar_main(args: &[std::ffi::OsString]) -> i32 {
    let mut out = std::io::stdout();
    let mut answer = |line: &str| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let reg = match Registration::from_args(args) {
        Ok(r) => r,
        Err(e) => {
            answer(&format!("error {} {e}", libc::EINVAL));
            return 1;
        }
    };
    // The signals that end the wait are taken from a signalfd, so they must be blocked first.
    // SAFETY: plain libc calls on a local sigset.
    let sfd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC)
    };
    // SAFETY: getppid has no preconditions.
    let leader = unsafe { libc::getppid() };
    // SAFETY: pidfd_open on our parent's PID; checked below that it still is our parent.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, leader, 0) };
    // SAFETY: a new descriptor owned by nothing else, when the call succeeded.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) });
    // SAFETY: getppid has no preconditions.
    if leader <= 1 || unsafe { libc::getppid() } != leader {
        answer(&format!("error {} rvmspawn ended", libc::ESRCH));
        return 1;
    }
    let conn = match zbus::blocking::Connection::system() {
        Ok(c) => c,
        Err(e) => {
            let (m, errno) = describe(&e);
            answer(&format!("error {errno} {m}"));
            return 1;
        }
    };
    if let Err(e) = register_on(&conn, &reg, leader as u32, pidfd.as_ref()) {
        let (m, errno) = describe(&e);
        answer(&format!("error {errno} {m}"));
        return 1;
    }
    answer("ok");
    // Wait for the lifeline to end (rvmspawn closed it or died) or a termination signal.
    let mut fds = [
        libc::pollfd {
            fd: LIFELINE_FD,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: sfd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: two valid pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break;
    }
    match unregister_on(&conn, &reg.name) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_survives_the_trip_through_arguments() {
        let full = Registration {
            name: "vm-1".into(),
            uuid: [0xab; 16],
            root_directory: Some(PathBuf::from("/srv/a b=c")),
            ifindex: Some(7),
            vsock_cid: Some(1234),
            ssh_address: Some("vsock/1234".into()),
            ssh_private_key: Some(PathBuf::from("/run/x/ssh-ed25519")),
        };
        assert_eq!(Registration::from_args(&full.to_args()), Ok(full));
        let bare = Registration {
            name: "n".into(),
            uuid: [1; 16],
            ..Registration::default()
        };
        assert_eq!(Registration::from_args(&bare.to_args()), Ok(bare));
        for bad in [
            &["--name=x"][..],
            &["--uuid=00"][..],
            &["--name=x", "--uuid=0101010101010101010101010101010g"][..],
            &[
                "--name=x",
                "--uuid=01010101010101010101010101010101",
                "--vsock-cid=-1",
            ][..],
            &[
                "--name=x",
                "--uuid=01010101010101010101010101010101",
                "--what=1",
            ][..],
            &["--name"][..],
        ] {
            let args: Vec<std::ffi::OsString> = bad.iter().map(Into::into).collect();
            assert!(Registration::from_args(&args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn answers_and_errors_map_to_errnos() {
        assert_eq!(parse_answer("ok\n"), Ok(()));
        assert_eq!(
            parse_answer("error 113 org.freedesktop.DBus.Error.ServiceUnknown: no\n"),
            Err((
                "org.freedesktop.DBus.Error.ServiceUnknown: no".to_owned(),
                113
            ))
        );
        assert_eq!(parse_answer("").map_err(|e| e.1), Err(libc::EIO));
        assert_eq!(parse_answer("garbage").map_err(|e| e.1), Err(libc::EIO));
        assert_eq!(
            errno_of("org.freedesktop.DBus.Error.AccessDenied"),
            libc::EACCES
        );
        assert_eq!(
            errno_of("org.freedesktop.DBus.Error.ServiceUnknown"),
            libc::EHOSTUNREACH
        );
        assert_eq!(errno_of("org.freedesktop.machine1.Whatever"), libc::EIO);
        assert_eq!(errno_of("System.Error.ENXIO"), libc::ENXIO);
        assert_eq!(errno_of("System.Error.EWHATEVER"), libc::EIO);
    }

    #[test]
    fn auto_registers_only_as_root_with_a_system_bus() {
        let there = std::env::temp_dir();
        let absent = Path::new("/nonexistent/system_bus_socket");
        assert!(auto_applies(None, &there, 0));
        assert!(!auto_applies(None, absent, 0));
        assert!(auto_applies(Some("unix:path=/x".as_ref()), absent, 0));
        assert!(!auto_applies(Some("".as_ref()), absent, 0));
        assert!(!auto_applies(None, &there, 1000));
    }
}
