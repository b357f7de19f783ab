//! Seccomp filters: one allow-list per kind of thread, built with `seccompiler`.
//!
//! Filters stack (a thread runs every filter it inherited plus its own; the strictest answer
//! wins) and a filter without TSYNC binds only the thread that installs it. So:
//! - [`prepare`] compiles every program before rvmspawn starts any thread, installs the SIGSYS
//!   handler and sets the devices crate's thread hook;
//! - every thread rvmspawn starts calls [`enter`] (devices threads through
//!   `devices::thread::started`) as its first action and installs its own kind's filter, on top
//!   of whatever it inherited;
//! - the main thread installs its own with [`install_main`] once the helper processes are
//!   started (a helper would inherit the filter of the thread that forks it) and before the
//!   first machine is built. TSYNC is not used: the kernel refuses it once another thread has
//!   a filter of its own, and every thread already has one.
//!
//! Because the filters stack, a thread that starts others allows what they need too: the vCPU
//! threads activate and reset virtio devices (a guest's write to the device status), which
//! starts queue workers, the userspace vsock thread and vhost-user exchanges, so the vCPU list
//! holds the worker, vsock and watchdog lists; the main thread's holds every list.
//!
//! A call outside the list traps (SIGSYS): [`on_sigsys`] restores the terminal, writes one
//! line naming the thread and the call, and ends the process by SIGSYS. `RVMSPAWN_SECCOMP=log`
//! lets such calls through and has the kernel log them (audit type 1326, in `dmesg`).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The environment variable that chooses what a forbidden call does.
pub const ENV: &str = "RVMSPAWN_SECCOMP";

/// The kinds of threads rvmspawn runs, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The main thread: machine builds (every boot), the event loop, helper supervision.
    Main,
    /// A vCPU thread: KVM_RUN, the device emulation it dispatches to, device activation/reset.
    Vcpu,
    /// A virtio queue worker (blk, rng, net tx/rx/ctrl, the vsock event queue).
    QueueWorker,
    /// The userspace vsock device's thread.
    VsockUser,
    /// The vhost-user-fs watchdog.
    FsWatchdog,
    /// The vhost-user-fs operations thread: activations and resets of virtio-fs, which talk to
    /// virtiofsd (off the vCPU threads, so none waits for it).
    FsOps,
    /// The vhost-vsock notify listener.
    VsockNotify,
    /// The console output thread.
    ConsoleOutput,
    /// A helper's stderr capture thread.
    HelperStderr,
    /// The TPM thread: the guest's TPM commands, sent to swtpm and answered one at a time.
    Tpm,
}

impl Kind {
    /// Every kind, in the order of the documentation.
    pub const ALL: [Kind; 10] = [
        Kind::Main,
        Kind::Vcpu,
        Kind::QueueWorker,
        Kind::VsockUser,
        Kind::FsWatchdog,
        Kind::FsOps,
        Kind::VsockNotify,
        Kind::ConsoleOutput,
        Kind::HelperStderr,
        Kind::Tpm,
    ];

    /// The kind's short name (in messages, and for the test hook's variable).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Main => "main",
            Kind::Vcpu => "vcpu",
            Kind::QueueWorker => "worker",
            Kind::VsockUser => "vsock-user",
            Kind::FsWatchdog => "fs-watchdog",
            Kind::FsOps => "fs-ops",
            Kind::VsockNotify => "vsock-notify",
            Kind::ConsoleOutput => "console",
            Kind::HelperStderr => "helper-stderr",
            Kind::Tpm => "tpm",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The kinds whose threads this kind starts (their needs are part of its list).
    fn starts(self) -> &'static [Kind] {
        match self {
            Kind::Main => &[
                Kind::Vcpu,
                Kind::VsockNotify,
                Kind::ConsoleOutput,
                Kind::HelperStderr,
            ],
            Kind::Vcpu => &[Kind::QueueWorker, Kind::VsockUser, Kind::FsWatchdog],
            _ => &[],
        }
    }
}

impl From<devices::thread::ThreadKind> for Kind {
    fn from(k: devices::thread::ThreadKind) -> Kind {
        match k {
            devices::thread::ThreadKind::QueueWorker => Kind::QueueWorker,
            devices::thread::ThreadKind::VsockUser => Kind::VsockUser,
            devices::thread::ThreadKind::FsWatchdog => Kind::FsWatchdog,
            devices::thread::ThreadKind::FsOps => Kind::FsOps,
            devices::thread::ThreadKind::Tpm => Kind::Tpm,
        }
    }
}

/// What happens to a call a filter does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SIGSYS: the handler reports the call and the process dies by SIGSYS (the default).
    Kill,
    /// The call goes through and the kernel logs it (for finding a missing entry).
    Log,
}

impl Mode {
    /// The mode `RVMSPAWN_SECCOMP` asks for: unset or `kill`, or `log`.
    pub fn from_env_value(value: Option<&std::ffi::OsStr>) -> Result<Mode, crate::Error> {
        match value.map(|v| v.to_str()) {
            None | Some(Some("kill")) => Ok(Mode::Kill),
            Some(Some("log")) => Ok(Mode::Log),
            Some(v) => Err(crate::Error::Seccomp(
                format!(
                    "Invalid {ENV}={}: expected kill or log",
                    v.map_or_else(
                        || value.unwrap_or_default().to_string_lossy().into_owned(),
                        str::to_owned
                    )
                ),
                libc::EINVAL,
            )),
        }
    }

    fn mismatch(self) -> SeccompAction {
        match self {
            Mode::Kill => SeccompAction::Trap,
            Mode::Log => SeccompAction::Log,
        }
    }
}

/// Which calls of one system call a list allows.
#[derive(Debug, Clone, Copy)]
enum Args {
    /// Every call.
    Any,
    /// Argument `.0` (32 bits) is one of `.1`.
    OneOf(u8, &'static [u64]),
    /// ioctl: the request is one of `requests`, or its type (bits 8..15) is one of `types`.
    Ioctl {
        requests: &'static [u64],
        types: &'static [u64],
    },
    /// Argument `.0` (32 bits) has every bit of `.1` set.
    HasBits(u8, u64),
    /// Argument `.0` (32 bits) is rvmspawn's own process ID.
    OwnPid(u8),
}

/// One allowed system call, and why it is there.
#[derive(Debug, Clone, Copy)]
struct Allow {
    nr: i64,
    // The name and the reason are for the documentation (docs/seccomp.md, by a unit test).
    #[cfg_attr(not(test), allow(dead_code))]
    name: &'static str,
    args: Args,
    #[cfg_attr(not(test), allow(dead_code))]
    why: &'static str,
}

macro_rules! allow {
    ($sys:ident, $why:expr) => {
        allow!($sys, Args::Any, $why)
    };
    ($sys:ident, $args:expr, $why:expr) => {
        Allow {
            nr: libc::$sys,
            name: stringify!($sys),
            args: $args,
            why: $why,
        }
    };
}

/// An ioctl request's type byte (`_IOC_TYPE` of <asm-generic/ioctl.h>: bits 8 to 15).
const IOC_TYPE_SHIFT: u64 = 8;
const IOC_TYPE_MASK: u64 = 0xff << IOC_TYPE_SHIFT;

/// KVM's ioctls (on /dev/kvm, the VM and the vCPUs) and the vhost ioctls (vhost-net,
/// vhost-vsock), by type.
const KVM_AND_VHOST: &[u64] = &[
    kvm_bindings::KVMIO as u64,
    vhost::vhost_kern::vhost_binding::VHOST_VIRTIO as u64,
];

/// What every thread needs: the Rust runtime and the allocator, a thread's end, the error
/// lines, and the SIGSYS handler's own calls.
// Request numbers are c_ulong with glibc but c_int elsewhere: the casts are needed there.
#[allow(clippy::unnecessary_cast)]
fn runtime() -> Vec<Allow> {
    vec![
        allow!(
            SYS_futex,
            "locks, condition variables, channels and joins (std::sync)"
        ),
        allow!(SYS_mmap, "the allocator (a thread's arena, large blocks)"),
        allow!(
            SYS_munmap,
            "the allocator; a thread's signal stack at its end"
        ),
        allow!(SYS_mremap, "the allocator growing a large block"),
        allow!(SYS_mprotect, "the allocator growing a thread arena"),
        allow!(
            SYS_madvise,
            "the allocator returning memory; glibc freeing a finished thread's stack"
        ),
        allow!(
            SYS_brk,
            "the allocator's main arena (a block freed by another thread)"
        ),
        allow!(
            SYS_sigaltstack,
            "std's stack-overflow guard, removed when a thread ends"
        ),
        allow!(
            SYS_rt_sigprocmask,
            "signal masks: glibc around a thread's start and end and in abort() (panic = \"abort\"); the main thread's signalfd"
        ),
        allow!(SYS_rt_sigreturn, "return from a signal handler"),
        allow!(
            SYS_restart_syscall,
            "the kernel resuming a sleep, poll or timed wait that a signal interrupted (seen on vsock-notify at the end of a run); it resumes only the call the filter already allowed"
        ),
        allow!(SYS_exit, "a thread ends"),
        allow!(SYS_exit_group, "the process ends (an error, abort)"),
        allow!(
            SYS_write,
            "error and status lines on stderr; the SIGSYS handler's line"
        ),
        allow!(SYS_close, "dropping a file descriptor"),
        allow!(
            SYS_getpid,
            "the SIGSYS handler and abort() signal the process"
        ),
        allow!(
            SYS_gettid,
            "the SIGSYS handler and abort() signal the calling thread"
        ),
        allow!(
            SYS_tgkill,
            Args::OwnPid(0),
            "only to rvmspawn's own threads: the SIGSYS handler and abort() re-raise their signal; vCPU kicks"
        ),
        allow!(
            SYS_prctl,
            Args::OneOf(0, &[libc::PR_GET_NAME as u64]),
            "PR_GET_NAME only: the SIGSYS handler names the thread"
        ),
        allow!(
            SYS_ioctl,
            Args::Ioctl {
                requests: &[libc::TCSETS as u64],
                types: &[]
            },
            "TCSETS only: the SIGSYS handler restores the terminal"
        ),
        allow!(
            SYS_clock_gettime,
            "timeouts and deadlines (when the vDSO falls back to the kernel)"
        ),
        allow!(
            SYS_getrandom,
            "std's hash keys (once per thread); virtio-rng's entropy"
        ),
        allow!(
            SYS_sched_getaffinity,
            "glibc's allocator counts the CPUs at a thread's first allocation (arena limit)"
        ),
    ]
}

/// What debug builds need besides [`runtime`]: std checks that a descriptor is open (`fcntl`
/// `F_GETFD`) before it closes it (seen ending the TPM thread). Release builds, whose lists
/// docs/seccomp.md shows, never make that call.
fn debug_build_extra() -> Vec<Allow> {
    if !cfg!(debug_assertions) {
        return Vec::new();
    }
    vec![allow!(
        SYS_fcntl,
        Args::OneOf(1, &[libc::F_GETFD as u64]),
        "debug builds: std's check before close"
    )]
}

/// What one kind's threads do themselves (its list is this, the runtime's and the lists of the
/// kinds it starts).
#[allow(clippy::unnecessary_cast)]
fn own(kind: Kind) -> Vec<Allow> {
    match kind {
        Kind::Main => vec![
            allow!(SYS_read, "the signalfd, the console's input, eventfds"),
            allow!(
                SYS_openat,
                "files a machine build reads at every boot (kernel, initrd, firmware)"
            ),
            allow!(SYS_fstat, "the size of a file a machine build reads"),
            allow!(SYS_newfstatat, "std's file metadata (statx fallback)"),
            allow!(SYS_statx, "std's file metadata when reading a whole file"),
            allow!(SYS_lseek, "reading boot files"),
            allow!(SYS_pread64, "reading boot files"),
            allow!(
                SYS_eventfd2,
                "a machine build's eventfds (irqfds, ioeventfds, the stop signal), at every boot"
            ),
            allow!(
                SYS_clone,
                Args::HasBits(0, libc::CLONE_THREAD as u64),
                "threads only (CLONE_THREAD): the vCPU threads, at every boot"
            ),
            allow!(
                SYS_clone3,
                "answered ENOSYS by a second filter (its flags are in memory a filter cannot read), so glibc falls back to clone"
            ),
            allow!(
                SYS_clone,
                Args::OneOf(0, &[libc::SIGCHLD as u64]),
                "a plain fork (SIGCHLD only) at the end of the run: the child that destroys the VM (teardown.rs)"
            ),
            allow!(
                SYS_pipe2,
                "the teardown child's two pipes, at the end of the run"
            ),
            allow!(
                SYS_close_range,
                "the teardown child closes every descriptor but the VM's"
            ),
            allow!(SYS_memfd_create, "guest RAM (shared memfd) at every boot"),
            allow!(SYS_ftruncate, "sizing the guest RAM memfd"),
            allow!(SYS_epoll_create1, "the event loop's epoll, at every boot"),
            allow!(SYS_epoll_ctl, "the event loop's epoll"),
            allow!(SYS_epoll_wait, "the event loop"),
            allow!(SYS_epoll_pwait, "the event loop"),
            allow!(SYS_fcntl, "duplicating descriptors (try_clone); O_NONBLOCK"),
            allow!(SYS_waitid, "reaping a helper that ended (pidfd)"),
            allow!(SYS_wait4, "reaping a helper at the end"),
            allow!(SYS_kill, "stopping a helper at the end"),
            allow!(SYS_pidfd_send_signal, "stopping a helper at the end"),
            allow!(SYS_socket, "the supervisor's notify socket (sd_notify)"),
            allow!(SYS_connect, "the supervisor's notify socket"),
            allow!(SYS_sendto, "the supervisor's notify socket"),
            allow!(SYS_sendmsg, "the supervisor's notify socket"),
            allow!(
                SYS_unlink,
                "removing the run directory's sockets at the end"
            ),
            allow!(SYS_unlinkat, "removing the run directory at the end"),
            allow!(SYS_getdents64, "listing the run directory when removing it"),
            allow!(
                SYS_rt_sigaction,
                "signal handlers (the kick signal, set once)"
            ),
            allow!(
                SYS_clock_nanosleep,
                "waiting while vCPUs are kicked out of the guest (thread::sleep)"
            ),
            allow!(
                SYS_ioctl,
                Args::Ioctl {
                    requests: &[libc::TCGETS as u64, libc::TIOCGWINSZ as u64],
                    types: &[]
                },
                "the terminal's settings (TCGETS)"
            ),
        ],
        Kind::Vcpu => vec![
            allow!(
                SYS_ioctl,
                Args::Ioctl {
                    requests: &[
                        libc::TUNSETOFFLOAD as u64,
                        libc::TUNSETQUEUE as u64,
                        libc::TUNSETVNETHDRSZ as u64,
                        libc::FIONBIO as u64,
                    ],
                    types: KVM_AND_VHOST
                },
                "KVM (KVM_RUN; ioeventfds, irqfds, MSI routes when the guest activates a device), vhost (vhost-net, vhost-vsock activation), the TAP's offloads and queues, FIONBIO (set_nonblocking)"
            ),
            allow!(
                SYS_clone,
                Args::HasBits(0, libc::CLONE_THREAD as u64),
                "threads only (CLONE_THREAD): queue workers and the vsock thread a device activation starts"
            ),
            allow!(
                SYS_clone3,
                "answered ENOSYS by a second filter (its flags cannot be checked), so glibc falls back to clone"
            ),
            allow!(SYS_set_robust_list, "a new thread's start (glibc)"),
            allow!(SYS_rseq, "a new thread's start (glibc)"),
            allow!(
                SYS_prctl,
                Args::OneOf(
                    0,
                    &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64]
                ),
                "a new thread names itself (PR_SET_NAME) and installs its filter (PR_SET_NO_NEW_PRIVS)"
            ),
            allow!(
                SYS_seccomp,
                Args::OneOf(0, &[libc::SECCOMP_SET_MODE_FILTER as u64]),
                "a new thread installs its own (narrower) filter"
            ),
            allow!(
                SYS_eventfd2,
                "a queue worker's stop eventfd, at device activation"
            ),
            allow!(
                SYS_epoll_create1,
                "the userspace vsock thread's epoll, at activation"
            ),
            allow!(
                SYS_fcntl,
                "duplicating descriptors (try_clone) at activation"
            ),
        ],
        Kind::QueueWorker => vec![
            allow!(
                SYS_poll,
                "waiting for a queue notification or the stop eventfd"
            ),
            allow!(SYS_read, "eventfds; the TAP (virtio-net receive)"),
            allow!(SYS_readv, "the TAP (virtio-net receive)"),
            allow!(SYS_writev, "the TAP (virtio-net transmit); the irqfd"),
            allow!(SYS_pread64, "virtio-blk reads"),
            allow!(SYS_pwrite64, "virtio-blk writes"),
            allow!(SYS_preadv, "virtio-blk reads into scattered buffers"),
            allow!(SYS_pwritev, "virtio-blk writes from scattered buffers"),
            allow!(SYS_fdatasync, "virtio-blk flush"),
            allow!(SYS_fsync, "virtio-blk flush"),
            allow!(
                SYS_fallocate,
                "virtio-blk discard and write-zeroes (punch hole, zero range)"
            ),
            allow!(
                SYS_sync_file_range,
                "virtio-blk write-back of written ranges"
            ),
            allow!(SYS_recvfrom, "passt's stream (virtio-net receive)"),
            allow!(SYS_recvmsg, "passt's stream (virtio-net receive)"),
            allow!(SYS_sendto, "passt's stream (virtio-net transmit)"),
            allow!(SYS_sendmsg, "passt's stream (virtio-net transmit)"),
            allow!(
                SYS_shutdown,
                "virtio-net receive: ending a failed passt stream"
            ),
            allow!(
                SYS_ioctl,
                Args::Ioctl {
                    requests: &[libc::TUNSETOFFLOAD as u64, libc::TUNSETQUEUE as u64],
                    types: &[]
                },
                "TUNSETOFFLOAD and TUNSETQUEUE only: the guest's offload settings and the queue pairs it enables (virtio-net control queue)"
            ),
        ],
        Kind::VsockUser => vec![
            allow!(
                SYS_epoll_wait,
                "waiting for the queues, the sockets and the stop eventfd"
            ),
            allow!(
                SYS_epoll_pwait,
                "waiting for the queues, the sockets and the stop eventfd"
            ),
            allow!(SYS_epoll_ctl, "watching connections as they come and go"),
            allow!(SYS_read, "eventfds and connections"),
            allow!(
                SYS_accept4,
                "host connections on the run directory's sockets"
            ),
            allow!(
                SYS_socket,
                Args::OneOf(0, &[libc::AF_UNIX as u64]),
                "AF_UNIX only: a connection to a host listener (vsock_PORT) for the guest"
            ),
            allow!(SYS_connect, "a connection to a host listener for the guest"),
            allow!(SYS_recvfrom, "connection data"),
            allow!(SYS_sendto, "connection data"),
            allow!(SYS_recvmsg, "connection data"),
            allow!(SYS_sendmsg, "connection data"),
            allow!(SYS_shutdown, "closing one direction of a connection"),
            allow!(SYS_getsockopt, "SO_ERROR of a connection"),
            allow!(SYS_fcntl, "O_NONBLOCK on a connection"),
            allow!(
                SYS_ioctl,
                Args::Ioctl {
                    requests: &[libc::FIONBIO as u64],
                    types: &[]
                },
                "FIONBIO: a connection made non-blocking (std's set_nonblocking)"
            ),
        ],
        Kind::FsWatchdog => vec![allow!(
            SYS_shutdown,
            "shutting a stalled virtiofsd connection down"
        )],
        Kind::FsOps => vec![
            allow!(
                SYS_sendmsg,
                "vhost-user requests to virtiofsd, with the memory's and the rings' descriptors"
            ),
            allow!(SYS_recvmsg, "virtiofsd's vhost-user replies"),
            allow!(SYS_recvfrom, "virtiofsd's vhost-user replies"),
            allow!(SYS_sendto, "vhost-user requests"),
            allow!(SYS_read, "virtiofsd's vhost-user replies"),
            allow!(
                SYS_shutdown,
                "cutting the connection when virtiofsd misses a deadline or the run ends"
            ),
        ],
        Kind::VsockNotify => vec![
            allow!(SYS_poll, "waiting for a connection or the stop eventfd"),
            allow!(SYS_accept4, "the guest's notify connections"),
            allow!(SYS_read, "the guest's notify messages"),
            allow!(SYS_recvfrom, "the guest's notify messages"),
            allow!(
                SYS_setsockopt,
                "a receive timeout on a guest's notify connection"
            ),
            allow!(
                SYS_socket,
                Args::OneOf(0, &[libc::AF_UNIX as u64]),
                "AF_UNIX only: forwarding READY=1 and STATUS= to the supervisor ($NOTIFY_SOCKET)"
            ),
            allow!(SYS_sendto, "forwarding to the supervisor's notify socket"),
        ],
        Kind::ConsoleOutput => vec![allow!(SYS_writev, "guest output to the terminal")],
        Kind::HelperStderr => vec![allow!(SYS_read, "the helper's stderr pipe")],
        Kind::Tpm => vec![
            allow!(
                SYS_poll,
                "waiting for swtpm's response, the wake-up eventfd or a control reply"
            ),
            allow!(
                SYS_sendto,
                "a TPM command to swtpm; control commands (cancel)"
            ),
            allow!(SYS_recvfrom, "swtpm's responses and control replies"),
            allow!(SYS_read, "the wake-up eventfd"),
        ],
    }
}

/// What every thread but the main one has besides the runtime's entries.
fn not_main() -> Vec<Allow> {
    vec![allow!(
        SYS_openat,
        "always answered EACCES by a second filter: glibc's allocator reads /proc/sys/vm/overcommit_memory once, when a thread's heap first shrinks, and does without it"
    )]
}

/// A kind's whole list: the runtime's, its own, and those of the kinds it starts.
fn list(kind: Kind) -> Vec<Allow> {
    let mut all = runtime();
    if kind != Kind::Main {
        all.extend(not_main());
    }
    all.extend(own(kind));
    for &k in kind.starts() {
        all.extend(list(k));
    }
    all
}

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// The seccompiler rules of one entry; empty means every call.
fn rules(args: Args, pid: u32) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let one = |c: Vec<SeccompCondition>| SeccompRule::new(c);
    Ok(match args {
        Args::Any => Vec::new(),
        Args::OneOf(arg, values) => values
            .iter()
            .map(|&v| one(vec![cond(arg, SeccompCmpOp::Eq, v)?]))
            .collect::<Result<_, _>>()?,
        Args::Ioctl { requests, types } => requests
            .iter()
            .map(|&r| one(vec![cond(1, SeccompCmpOp::Eq, r)?]))
            .chain(types.iter().map(|&t| {
                one(vec![cond(
                    1,
                    SeccompCmpOp::MaskedEq(IOC_TYPE_MASK),
                    t << IOC_TYPE_SHIFT,
                )?])
            }))
            .collect::<Result<_, _>>()?,
        Args::HasBits(arg, bits) => {
            vec![one(vec![cond(arg, SeccompCmpOp::MaskedEq(bits), bits)?])?]
        }
        Args::OwnPid(arg) => vec![one(vec![cond(arg, SeccompCmpOp::Eq, u64::from(pid))?])?],
    })
}

/// The rule map of a kind's filter: entries for one system call are merged (any call allowed
/// by one entry is allowed).
fn rule_map(
    kind: Kind,
    pid: u32,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for a in list(kind).into_iter().chain(debug_build_extra()) {
        let r = rules(a.args, pid)?;
        let entry = map.entry(a.nr).or_insert_with(|| Some(Vec::new()));
        if r.is_empty() {
            *entry = None;
        } else if let Some(existing) = entry {
            existing.extend(r);
        }
    }
    Ok(map
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect())
}

/// The compiled programs, the mode and the test hook's choice, set once by [`prepare`].
struct Filters {
    programs: Vec<BpfProgram>,
    /// Makes clone3 fail with ENOSYS (so glibc uses clone, whose flags the lists check).
    no_clone3: BpfProgram,
    /// Makes openat fail with EACCES, on every thread but the main one.
    no_open: BpfProgram,
    #[cfg(feature = "test-hooks")]
    violate: Option<Kind>,
}

static FILTERS: OnceLock<Filters> = OnceLock::new();

fn arch() -> Result<TargetArch, seccompiler::BackendError> {
    TargetArch::try_from(std::env::consts::ARCH)
}

/// Compile one kind's filter.
fn compile(kind: Kind, mode: Mode, pid: u32) -> Result<BpfProgram, seccompiler::BackendError> {
    SeccompFilter::new(
        rule_map(kind, pid)?,
        mode.mismatch(),
        SeccompAction::Allow,
        arch()?,
    )?
    .try_into()
}

/// A filter that answers one system call with an error and lets every other through (stacked
/// on a list that allows the call, so the error wins: a filter's verdict can only narrow).
fn compile_refusal(nr: i64, errno: i32) -> Result<BpfProgram, seccompiler::BackendError> {
    SeccompFilter::new(
        BTreeMap::from([(nr, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch()?,
    )?
    .try_into()
}

fn compile_no_clone3() -> Result<BpfProgram, seccompiler::BackendError> {
    compile_refusal(libc::SYS_clone3, libc::ENOSYS)
}

fn compile_no_open() -> Result<BpfProgram, seccompiler::BackendError> {
    compile_refusal(libc::SYS_openat, libc::EACCES)
}

fn seccomp_error(what: &str, e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Seccomp(format!("seccomp: {what}: {e}"), libc::EINVAL)
}

/// Read `RVMSPAWN_SECCOMP`, compile every filter, install the SIGSYS handler and the devices'
/// thread hook. Called before rvmspawn starts any thread; nothing is confined yet.
pub fn prepare() -> Result<(), crate::Error> {
    if FILTERS.get().is_some() {
        return Ok(());
    }
    let mode = Mode::from_env_value(std::env::var_os(ENV).as_deref())?;
    let pid = std::process::id();
    let programs = Kind::ALL
        .iter()
        .map(|&k| compile(k, mode, pid).map_err(|e| seccomp_error(k.name(), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let no_clone3 = compile_no_clone3().map_err(|e| seccomp_error("clone3", e))?;
    let no_open = compile_no_open().map_err(|e| seccomp_error("openat", e))?;
    #[cfg(feature = "test-hooks")]
    let violate = std::env::var("RVMSPAWN_TEST_SECCOMP_VIOLATION")
        .ok()
        .and_then(|v| Kind::ALL.into_iter().find(|k| k.name() == v));
    install_sigsys_handler()?;
    let _ = FILTERS.set(Filters {
        programs,
        no_clone3,
        no_open,
        #[cfg(feature = "test-hooks")]
        violate,
    });
    devices::thread::set_start_hook(|kind| enter(kind.into()));
    Ok(())
}

/// Confine the main thread (see the module's notes for when). Without [`prepare`], nothing.
pub fn install_main() -> Result<(), crate::Error> {
    let Some(f) = FILTERS.get() else {
        return Ok(());
    };
    THREAD_KIND.with(|k| k.set(Kind::Main.index() as u8));
    seccompiler::apply_filter(&f.no_clone3)
        .and_then(|()| seccompiler::apply_filter(&f.programs[Kind::Main.index()]))
        .map_err(|e| seccomp_error("installing the main thread's filter", e))?;
    test_violation(f, Kind::Main);
    Ok(())
}

/// The first action of every thread rvmspawn starts: install the filter of its kind. A thread
/// that cannot be confined ends the process (it must not run unconfined).
pub fn enter(kind: Kind) {
    let Some(f) = FILTERS.get() else {
        return;
    };
    THREAD_KIND.with(|k| k.set(kind.index() as u8));
    let installed = seccompiler::apply_filter(&f.no_open)
        .and_then(|()| seccompiler::apply_filter(&f.programs[kind.index()]));
    if let Err(e) = installed {
        eprintln!(
            "rvmspawn: failed to install the seccomp filter of a {} thread: {e}",
            kind.name()
        );
        // SAFETY: _exit only ends the process.
        unsafe { libc::_exit(libc::EPERM) };
    }
    test_violation(f, kind);
}

/// Test builds only (`--features test-hooks`): the thread of the kind named by
/// `RVMSPAWN_TEST_SECCOMP_VIOLATION` makes a call no list allows, right after its filter is in.
#[cfg(feature = "test-hooks")]
fn test_violation(f: &Filters, kind: Kind) {
    if f.violate == Some(kind) {
        // SAFETY: mount with null arguments only fails (EFAULT) if it is ever let through.
        unsafe {
            libc::syscall(
                libc::SYS_mount,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
                std::ptr::null::<libc::c_void>(),
            )
        };
    }
}

#[cfg(not(feature = "test-hooks"))]
fn test_violation(_: &Filters, _: Kind) {}

thread_local! {
    /// The calling thread's kind (an index into [`Kind::ALL`]), for the SIGSYS handler.
    static THREAD_KIND: Cell<u8> = const { Cell::new(u8::MAX) };
}

/// The terminal settings to put back if the process dies of a forbidden call.
static TERMINAL: OnceLock<libc::termios> = OnceLock::new();

/// Remember the terminal's settings from before it was made raw, for the SIGSYS handler.
pub fn remember_terminal(saved: &libc::termios) {
    let _ = TERMINAL.set(*saved);
}

/// The SIGSYS fields of `siginfo_t` (<asm-generic/siginfo.h>: three ints, padding to 8 bytes,
/// then the union's `_sigsys`).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

fn install_sigsys_handler() -> Result<(), crate::Error> {
    // SAFETY: sigaction is plain data; all-zero is a valid starting value.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
    // One-shot and not blocked while it runs: the handler's own SIGSYS is then fatal.
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER;
    // SAFETY: `act` is a valid sigaction; the old action is not wanted.
    if unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) } != 0 {
        return Err(seccomp_error(
            "SIGSYS handler",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A fixed buffer for the handler's line (no allocation in a signal handler).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The SIGSYS handler (async-signal-safe: no allocation, no locks, only raw system calls that
/// every list allows): restore the terminal, write one line, die by SIGSYS.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS, whose layout SigsysInfo mirrors.
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    let raw = TERMINAL.get();
    if let Some(saved) = raw {
        // SAFETY: `saved` is the termios read from fd 0 before it was made raw.
        unsafe {
            libc::ioctl(
                libc::STDIN_FILENO,
                libc::TCSETS,
                saved as *const libc::termios,
            )
        };
    }
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    if raw.is_some() {
        line.push(b"\n");
    }
    line.push(b"rvmspawn: seccomp: thread ");
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (with the NUL) into `name`.
    if unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) } == 0 {
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        line.push(&name[..end]);
    }
    let kind = THREAD_KIND.with(|k| k.get());
    if let Some(k) = Kind::ALL.get(usize::from(kind)) {
        line.push(b" (");
        line.push(k.name().as_bytes());
        line.push(b")");
    }
    line.push(b" made the forbidden system call ");
    line.push_num(u64::try_from(nr).unwrap_or(u64::MAX));
    if let Some(n) = syscall_name(i64::from(nr)) {
        line.push(b" (");
        line.push(n.as_bytes());
        line.push(b")");
    }
    line.push(b"; ending by SIGSYS (");
    line.push(ENV.as_bytes());
    line.push(b"=log logs such calls instead)\n");
    // SAFETY: write, getpid, gettid and tgkill are async-signal-safe raw calls on valid data;
    // SIGSYS's action is back to the default (SA_RESETHAND) and not blocked (SA_NODEFER), so it
    // ends the process as the tgkill call returns.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::gettid(),
            libc::SIGSYS,
        );
        libc::_exit(128 + libc::SIGSYS);
    }
}

macro_rules! syscall_names {
    ($($sys:ident,)*) => {
        /// The name of an x86_64 system call, for the SIGSYS handler's line.
        fn syscall_name(nr: i64) -> Option<&'static str> {
            $(
                if nr == libc::$sys {
                    return stringify!($sys).strip_prefix("SYS_");
                }
            )*
            None
        }
    };
}

syscall_names! {
    SYS_read, SYS_write, SYS_open, SYS_close, SYS_stat, SYS_fstat, SYS_lstat, SYS_poll, SYS_lseek,
    SYS_mmap, SYS_mprotect, SYS_munmap, SYS_brk, SYS_rt_sigaction, SYS_rt_sigprocmask,
    SYS_rt_sigreturn, SYS_ioctl, SYS_pread64, SYS_pwrite64, SYS_readv, SYS_writev, SYS_access,
    SYS_pipe, SYS_select, SYS_sched_yield, SYS_mremap, SYS_msync, SYS_mincore, SYS_madvise,
    SYS_shmget, SYS_shmat, SYS_shmctl, SYS_dup, SYS_dup2, SYS_pause, SYS_nanosleep, SYS_getitimer,
    SYS_alarm, SYS_setitimer, SYS_getpid, SYS_sendfile, SYS_socket, SYS_connect, SYS_accept,
    SYS_sendto, SYS_recvfrom, SYS_sendmsg, SYS_recvmsg, SYS_shutdown, SYS_bind, SYS_listen,
    SYS_getsockname, SYS_getpeername, SYS_socketpair, SYS_setsockopt, SYS_getsockopt, SYS_clone,
    SYS_fork, SYS_vfork, SYS_execve, SYS_exit, SYS_wait4, SYS_kill, SYS_uname, SYS_semget,
    SYS_semop, SYS_semctl, SYS_shmdt, SYS_msgget, SYS_msgsnd, SYS_msgrcv, SYS_msgctl, SYS_fcntl,
    SYS_flock, SYS_fsync, SYS_fdatasync, SYS_truncate, SYS_ftruncate, SYS_getdents, SYS_getcwd,
    SYS_chdir, SYS_fchdir, SYS_rename, SYS_mkdir, SYS_rmdir, SYS_creat, SYS_link, SYS_unlink,
    SYS_symlink, SYS_readlink, SYS_chmod, SYS_fchmod, SYS_chown, SYS_fchown, SYS_lchown, SYS_umask,
    SYS_gettimeofday, SYS_getrlimit, SYS_getrusage, SYS_sysinfo, SYS_times, SYS_ptrace, SYS_getuid,
    SYS_syslog, SYS_getgid, SYS_setuid, SYS_setgid, SYS_geteuid, SYS_getegid, SYS_setpgid,
    SYS_getppid, SYS_getpgrp, SYS_setsid, SYS_setreuid, SYS_setregid, SYS_getgroups, SYS_setgroups,
    SYS_setresuid, SYS_getresuid, SYS_setresgid, SYS_getresgid, SYS_getpgid, SYS_setfsuid,
    SYS_setfsgid, SYS_getsid, SYS_capget, SYS_capset, SYS_rt_sigpending, SYS_rt_sigtimedwait,
    SYS_rt_sigqueueinfo, SYS_rt_sigsuspend, SYS_sigaltstack, SYS_utime, SYS_mknod, SYS_uselib,
    SYS_personality, SYS_ustat, SYS_statfs, SYS_fstatfs, SYS_sysfs, SYS_getpriority,
    SYS_setpriority, SYS_sched_setparam, SYS_sched_getparam, SYS_sched_setscheduler,
    SYS_sched_getscheduler, SYS_sched_get_priority_max, SYS_sched_get_priority_min,
    SYS_sched_rr_get_interval, SYS_mlock, SYS_munlock, SYS_mlockall, SYS_munlockall, SYS_vhangup,
    SYS_modify_ldt, SYS_pivot_root, SYS__sysctl, SYS_prctl, SYS_arch_prctl, SYS_adjtimex,
    SYS_setrlimit, SYS_chroot, SYS_sync, SYS_acct, SYS_settimeofday, SYS_mount, SYS_umount2,
    SYS_swapon, SYS_swapoff, SYS_reboot, SYS_sethostname, SYS_setdomainname, SYS_iopl, SYS_ioperm,
    SYS_init_module, SYS_delete_module, SYS_quotactl, SYS_nfsservctl, SYS_getpmsg, SYS_putpmsg,
    SYS_afs_syscall, SYS_tuxcall, SYS_security, SYS_gettid, SYS_readahead, SYS_setxattr,
    SYS_lsetxattr, SYS_fsetxattr, SYS_getxattr, SYS_lgetxattr, SYS_fgetxattr, SYS_listxattr,
    SYS_llistxattr, SYS_flistxattr, SYS_removexattr, SYS_lremovexattr, SYS_fremovexattr, SYS_tkill,
    SYS_time, SYS_futex, SYS_sched_setaffinity, SYS_sched_getaffinity, SYS_set_thread_area,
    SYS_io_setup, SYS_io_destroy, SYS_io_getevents, SYS_io_submit, SYS_io_cancel,
    SYS_get_thread_area, SYS_lookup_dcookie, SYS_epoll_create, SYS_epoll_ctl_old,
    SYS_epoll_wait_old, SYS_remap_file_pages, SYS_getdents64, SYS_set_tid_address,
    SYS_restart_syscall, SYS_semtimedop, SYS_fadvise64, SYS_timer_create, SYS_timer_settime,
    SYS_timer_gettime, SYS_timer_getoverrun, SYS_timer_delete, SYS_clock_settime,
    SYS_clock_gettime, SYS_clock_getres, SYS_clock_nanosleep, SYS_exit_group, SYS_epoll_wait,
    SYS_epoll_ctl, SYS_tgkill, SYS_utimes, SYS_vserver, SYS_mbind, SYS_set_mempolicy,
    SYS_get_mempolicy, SYS_mq_open, SYS_mq_unlink, SYS_mq_timedsend, SYS_mq_timedreceive,
    SYS_mq_notify, SYS_mq_getsetattr, SYS_kexec_load, SYS_waitid, SYS_add_key, SYS_request_key,
    SYS_keyctl, SYS_ioprio_set, SYS_ioprio_get, SYS_inotify_init, SYS_inotify_add_watch,
    SYS_inotify_rm_watch, SYS_migrate_pages, SYS_openat, SYS_mkdirat, SYS_mknodat, SYS_fchownat,
    SYS_futimesat, SYS_newfstatat, SYS_unlinkat, SYS_renameat, SYS_linkat, SYS_symlinkat,
    SYS_readlinkat, SYS_fchmodat, SYS_faccessat, SYS_pselect6, SYS_ppoll, SYS_unshare,
    SYS_set_robust_list, SYS_get_robust_list, SYS_splice, SYS_tee, SYS_sync_file_range,
    SYS_vmsplice, SYS_move_pages, SYS_utimensat, SYS_epoll_pwait, SYS_signalfd, SYS_timerfd_create,
    SYS_eventfd, SYS_fallocate, SYS_timerfd_settime, SYS_timerfd_gettime, SYS_accept4,
    SYS_signalfd4, SYS_eventfd2, SYS_epoll_create1, SYS_dup3, SYS_pipe2, SYS_inotify_init1,
    SYS_preadv, SYS_pwritev, SYS_rt_tgsigqueueinfo, SYS_perf_event_open, SYS_recvmmsg,
    SYS_fanotify_init, SYS_fanotify_mark, SYS_prlimit64, SYS_name_to_handle_at,
    SYS_open_by_handle_at, SYS_clock_adjtime, SYS_syncfs, SYS_sendmmsg, SYS_setns, SYS_getcpu,
    SYS_process_vm_readv, SYS_process_vm_writev, SYS_kcmp, SYS_finit_module, SYS_sched_setattr,
    SYS_sched_getattr, SYS_renameat2, SYS_seccomp, SYS_getrandom, SYS_memfd_create,
    SYS_kexec_file_load, SYS_bpf, SYS_execveat, SYS_userfaultfd, SYS_membarrier, SYS_mlock2,
    SYS_copy_file_range, SYS_preadv2, SYS_pwritev2, SYS_pkey_mprotect, SYS_pkey_alloc,
    SYS_pkey_free, SYS_statx, SYS_rseq, SYS_pidfd_send_signal, SYS_io_uring_setup,
    SYS_io_uring_enter, SYS_io_uring_register, SYS_open_tree, SYS_move_mount, SYS_fsopen,
    SYS_fsconfig, SYS_fsmount, SYS_fspick, SYS_pidfd_open, SYS_clone3, SYS_close_range,
    SYS_openat2, SYS_pidfd_getfd, SYS_faccessat2, SYS_process_madvise, SYS_epoll_pwait2,
    SYS_mount_setattr, SYS_quotactl_fd, SYS_landlock_create_ruleset, SYS_landlock_add_rule,
    SYS_landlock_restrict_self, SYS_memfd_secret, SYS_process_mrelease, SYS_futex_waitv,
    SYS_set_mempolicy_home_node, SYS_fchmodat2, SYS_mseal,
}

/// The lists as Markdown tables (docs/seccomp.md is this text).
#[cfg(test)]
fn lists_markdown() -> String {
    fn table(entries: Vec<Allow>) -> String {
        let mut out = String::from("| system call | arguments | why |\n|---|---|---|\n");
        for a in entries {
            let args = match a.args {
                Args::Any => "any".to_string(),
                Args::OneOf(n, v) => format!("arg{n} in {v:?}"),
                Args::Ioctl { requests, types } => {
                    let mut parts: Vec<String> =
                        requests.iter().map(|r| format!("{r:#x}")).collect();
                    parts.extend(types.iter().map(|t| format!("type {t:#x}")));
                    parts.join(", ")
                }
                Args::HasBits(n, b) => format!("arg{n} has {b:#x}"),
                Args::OwnPid(n) => format!("arg{n} = own PID"),
            };
            let name = a.name.strip_prefix("SYS_").unwrap_or(a.name);
            out += &format!("| {name} | {args} | {} |\n", a.why);
        }
        out
    }
    let mut out = String::from(
        "# Seccomp allow-lists, per thread kind\n\n\
         Generated from `vmm/src/seccomp.rs` (the unit test `lists_doc_is_current` keeps this \
         file in step). A thread's list is the runtime's entries (every thread), its kind's \
         own, and the lists of the kinds whose threads it starts: filters stack, so a thread's \
         filter must allow what the threads it starts need. A call not listed traps: the \
         process dies by SIGSYS after one line naming the thread and the call; \
         `RVMSPAWN_SECCOMP=log` lets it through and the kernel logs it (audit type 1326).\n\n\
         ## Every thread\n\n",
    );
    out += &table(runtime());
    out += "\n## Every thread but the main one\n\n";
    out += &table(not_main());
    for kind in Kind::ALL {
        out += &format!("\n## {} ({:?})\n\n", kind.name(), kind);
        if !kind.starts().is_empty() {
            let names: Vec<_> = kind.starts().iter().map(|k| k.name()).collect();
            out += &format!("Also every entry of: {}.\n\n", names.join(", "));
        }
        out += &table(own(kind));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn numbers(kind: Kind) -> BTreeSet<i64> {
        list(kind).iter().map(|a| a.nr).collect()
    }

    #[test]
    fn every_kind_compiles_in_both_modes() {
        for kind in Kind::ALL {
            for mode in [Mode::Kill, Mode::Log] {
                let p = compile(kind, mode, 4242).unwrap();
                assert!(!p.is_empty(), "{kind:?}");
            }
        }
        assert!(!compile_no_clone3().unwrap().is_empty());
        assert!(!compile_no_open().unwrap().is_empty());
    }

    #[test]
    fn dangerous_calls_are_in_no_list() {
        let forbidden = [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
            libc::SYS_kexec_load,
            libc::SYS_kexec_file_load,
            libc::SYS_perf_event_open,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_userfaultfd,
            libc::SYS_setuid,
            libc::SYS_setgid,
            libc::SYS_open,
            libc::SYS_creat,
        ];
        for kind in Kind::ALL {
            let n = numbers(kind);
            for f in forbidden {
                assert!(!n.contains(&f), "{kind:?} allows {:?}", syscall_name(f));
            }
        }
        // Only the main thread opens files (boot files at every machine build); the others
        // list openat only to have it answered EACCES (the_filters_refuse_what... checks).
        for kind in Kind::ALL.into_iter().filter(|&k| k != Kind::Main) {
            let n = numbers(kind);
            assert!(!n.contains(&libc::SYS_memfd_create), "{kind:?}");
        }
        // Only the threads that start threads may (and only threads: clone's flags are checked).
        for kind in Kind::ALL {
            let may = matches!(kind, Kind::Main | Kind::Vcpu);
            assert_eq!(numbers(kind).contains(&libc::SYS_clone), may, "{kind:?}");
        }
    }

    #[test]
    fn a_thread_s_filter_allows_what_the_threads_it_starts_need() {
        for kind in Kind::ALL {
            for &child in kind.starts() {
                let missing: Vec<_> = numbers(child)
                    .difference(&numbers(kind))
                    .map(|&n| syscall_name(n))
                    .collect();
                assert!(
                    missing.is_empty(),
                    "{kind:?} lacks {missing:?} of {child:?}"
                );
            }
        }
    }

    #[test]
    fn the_mode_comes_from_the_variable_and_a_bad_value_is_refused() {
        use std::ffi::OsStr;
        assert_eq!(Mode::from_env_value(None).unwrap(), Mode::Kill);
        assert_eq!(
            Mode::from_env_value(Some(OsStr::new("kill"))).unwrap(),
            Mode::Kill
        );
        assert_eq!(
            Mode::from_env_value(Some(OsStr::new("log"))).unwrap(),
            Mode::Log
        );
        for bad in ["off", "", "LOG"] {
            let e = Mode::from_env_value(Some(OsStr::new(bad))).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL);
            let msg = e.to_string();
            assert!(msg.contains(&format!("RVMSPAWN_SECCOMP={bad}:")), "{msg}");
        }
    }

    /// Install a kind's list on a thread of its own, with EPERM (not SIGSYS) for calls outside
    /// it, and make some calls.
    fn on_filtered_thread(kind: Kind, f: impl FnOnce() + Send + 'static) {
        let prog: BpfProgram = SeccompFilter::new(
            rule_map(kind, std::process::id()).unwrap(),
            SeccompAction::Errno(libc::EPERM as u32),
            SeccompAction::Allow,
            arch().unwrap(),
        )
        .unwrap()
        .try_into()
        .unwrap();
        let no_clone3 = compile_no_clone3().unwrap();
        let no_open = compile_no_open().unwrap();
        std::thread::spawn(move || {
            // As the main thread and then enter() do: the kind's own list first would refuse
            // a further filter.
            seccompiler::apply_filter(&no_clone3).unwrap();
            seccompiler::apply_filter(&no_open).unwrap();
            seccompiler::apply_filter(&prog).unwrap();
            f();
        })
        .join()
        .unwrap();
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn the_filters_refuse_what_they_do_not_list_and_check_arguments() {
        on_filtered_thread(Kind::QueueWorker, || {
            // SAFETY: openat with a valid NUL-terminated path; the descriptor is closed if any.
            let fd = unsafe { libc::openat(libc::AT_FDCWD, c"/dev/null".as_ptr(), libc::O_RDONLY) };
            assert_eq!((fd, errno()), (-1, libc::EACCES), "a worker opened a file");
            // A call outside the list.
            // SAFETY: refused by the filter before the kernel acts on it.
            let r = unsafe { libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0) };
            assert_eq!((r, errno()), (-1, libc::EPERM));
            // SAFETY: getpid has no preconditions.
            assert!(unsafe { libc::getpid() } > 0);
            // SAFETY: a thread-creating clone is refused before it does anything.
            let r = unsafe { libc::syscall(libc::SYS_clone, libc::CLONE_VM, 0, 0, 0, 0) };
            assert_eq!((r, errno()), (-1, libc::EPERM));
        });
        on_filtered_thread(Kind::Vcpu, || {
            // A process (fork-like clone, no CLONE_THREAD) is refused, flags and all.
            // SAFETY: refused by the filter before the kernel acts on it.
            let r = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
            assert_eq!((r, errno()), (-1, libc::EPERM));
            // No file opens on a vCPU thread.
            // SAFETY: openat with a valid NUL-terminated path; refused.
            let fd = unsafe { libc::openat(libc::AT_FDCWD, c"/dev/null".as_ptr(), libc::O_RDONLY) };
            assert_eq!((fd, errno()), (-1, libc::EACCES));
            // tgkill to another process is refused (signal 0 only checks).
            // SAFETY: signal 0 sends nothing.
            let r = unsafe { libc::syscall(libc::SYS_tgkill, 1, 1, 0) };
            assert_eq!((r, errno()), (-1, libc::EPERM));
            // An ioctl outside KVM, vhost and the few listed ones (TIOCSTI) is refused.
            let c = 0u8;
            // SAFETY: refused by the filter before the kernel acts on it.
            let r = unsafe { libc::ioctl(0, libc::TIOCSTI, &c) };
            assert_eq!((r, errno()), (-1, libc::EPERM));
            // clone3 is answered ENOSYS (its flags cannot be checked)...
            // SAFETY: a null argument structure; refused before it is read.
            let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) };
            assert_eq!((r, errno()), (-1, libc::ENOSYS));
            // ...and a vCPU thread still starts threads (a device's queue workers) with clone.
            std::thread::spawn(|| ()).join().unwrap();
        });
    }

    #[test]
    fn every_system_call_has_a_name() {
        assert_eq!(syscall_name(libc::SYS_mount), Some("mount"));
        assert_eq!(syscall_name(libc::SYS_read), Some("read"));
        assert_eq!(syscall_name(-1), None);
    }

    #[test]
    fn lists_doc_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/seccomp.md");
        let want = lists_markdown();
        if std::env::var_os("RVMSPAWN_WRITE_SECCOMP_LISTS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is not current: run `RVMSPAWN_WRITE_SECCOMP_LISTS=1 cargo test -p vmm lists_doc`",
            path.display()
        );
    }
}
