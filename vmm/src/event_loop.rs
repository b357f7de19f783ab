//! The VMM's main thread: waits on the user's terminal, termination signals and the machine's
//! events, and decides when a run ends.
//!
//! Termination signals are blocked in every thread and read from a signalfd here, so a signal
//! never interrupts a vCPU or a device in the middle of an access.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::ConsoleMode;
use crate::Error;
use crate::VmExit;
use crate::console::{EscapeDetector, NativeEscape, Terminal};
use crate::machine::{ConsoleInput, Machine};
use crate::vcpu::MachineEvent;

const TOKEN_MACHINE: u64 = 0;
const TOKEN_SIGNAL: u64 = 1;
const TOKEN_STDIN: u64 = 2;
const TOKEN_INPUT_DRAINED: u64 = 3;
/// The graphical console's window was closed.
const TOKEN_WINDOW_CLOSED: u64 = 4;
/// Helper `i`'s pidfd has token `TOKEN_HELPER + i`.
const TOKEN_HELPER: u64 = 16;

/// Input typed ahead of the guest is held up to this much; beyond it stdin is not read until the
/// guest catches up, so a fast producer cannot grow the VMM's memory without bound.
const MAX_PENDING_INPUT: usize = 64 * 1024;

/// How a machine's run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The guest reset: build the machine again.
    Reset,
    /// The run is over.
    Exit(VmExit),
    /// Helper process `i` (in the order they were watched) ended.
    HelperExited(usize),
}

/// Signals read from the signalfd: those that end the VM (SIGINT, SIGTERM and SIGRTMIN+4, as
/// vmspawn, ask the guest to power off first; SIGHUP, the terminal gone, does not), and the
/// terminal's change of size.
fn signals() -> [i32; 5] {
    [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGWINCH,
        graceful_stop_rt_signal(),
    ]
}

/// SIGRTMIN+4, systemd's "power off" request (what `systemctl kill --signal=SIGRTMIN+4` and a
/// service manager's graceful stop send).
fn graceful_stop_rt_signal() -> i32 {
    libc::SIGRTMIN() + 4
}

/// Whether `signo` asks for a graceful stop (the ACPI power button) rather than an immediate one.
fn asks_graceful_stop(signo: i32) -> bool {
    signo == libc::SIGINT || signo == libc::SIGTERM || signo == graceful_stop_rt_signal()
}

/// Blocks the signals the event loop reads ([`signals`]) for the life of the VM and restores the
/// mask afterwards.
struct SignalMask {
    old: libc::sigset_t,
}

impl SignalMask {
    fn block() -> Result<(SignalMask, libc::sigset_t), Error> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above, `old` is written by pthread_sigmask before being read.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; these calls only edit it.
        unsafe {
            libc::sigemptyset(&mut set);
            for s in signals() {
                libc::sigaddset(&mut set, s);
            }
        }
        // SAFETY: both pointers are valid sigset_t values owned by this frame.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
        if rc != 0 {
            return Err(Error::Host(
                "pthread_sigmask",
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        Ok((SignalMask { old }, set))
    }
}

impl Drop for SignalMask {
    fn drop(&mut self) {
        // SAFETY: `old` is the mask saved by `block`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// One termination signal from the (non-blocking) signalfd `fd`, if one is pending.
fn read_signal(fd: RawFd) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data; all-zero is valid.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is a writable buffer of exactly `size` bytes.
    let n = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
    (n == size as isize).then_some(info.ssi_signo as i32)
}

/// The user's side of the VM: terminal, typed input and signals. Lives across guest resets.
pub struct Console {
    epoll: Epoll,
    signalfd: OwnedFd,
    stdin_open: bool,
    stdin_watched: bool,
    pending: VecDeque<u8>,
    escape: Escape,
    /// The terminal's size is passed on to the guest (a raw terminal on standard input).
    track_size: bool,
    /// The run is stopping and a thread ends the process on the next signal ([`Console::stopping`]).
    watching_signals: bool,
    /// How long a graceful stop waits for the guest to power off; zero: no graceful stop.
    stop_timeout: Duration,
    /// The signal that began a graceful stop, and when its wait ends (the event loop's epoll
    /// wait times out then: no timer descriptor, no system call the sandbox would have to allow).
    graceful_stop: Option<(i32, Instant)>,
    /// No status lines (`-q`).
    quiet: bool,
    // Dropped last among the fields that matter: the terminal is restored after the loop ends.
    _terminal: Terminal,
    _mask: SignalMask,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

fn epoll_ctl(epoll: &Epoll, op: ControlOperation, fd: RawFd, token: u64) -> std::io::Result<()> {
    epoll.ctl(op, fd, EpollEvent::new(EventSet::IN, token))
}

/// How typed input can end the VM (`--console=`).
#[derive(Debug)]
enum Escape {
    /// Ctrl-] three times within a second (interactive).
    Nspawn(EscapeDetector),
    /// Ctrl-a x, with Ctrl-a a for a literal Ctrl-a (native).
    Native(NativeEscape),
}

impl Console {
    /// Take over the terminal (in the modes that read it) and the termination signals.
    pub fn new(mode: ConsoleMode) -> Result<Console, Error> {
        let (mask, set) = SignalMask::block()?;
        // SAFETY: `set` is a valid sigset_t; -1 asks for a new signalfd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::Host("signalfd", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let signalfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let epoll = Epoll::new().map_err(|e| Error::Host("epoll", e))?;
        epoll_ctl(
            &epoll,
            ControlOperation::Add,
            signalfd.as_raw_fd(),
            TOKEN_SIGNAL,
        )
        .map_err(|e| Error::Host("epoll", e))?;
        // Only interactive and native read the terminal. Standard input may be closed,
        // /dev/null or a regular file (which epoll refuses): in those cases the guest simply
        // gets no input.
        let reads = matches!(mode, ConsoleMode::Interactive | ConsoleMode::Native);
        let stdin_open = reads
            && epoll_ctl(
                &epoll,
                ControlOperation::Add,
                libc::STDIN_FILENO,
                TOKEN_STDIN,
            )
            .is_ok();
        let terminal = if reads {
            Terminal::raw_if_tty()
        } else {
            Terminal::untouched()
        };
        Ok(Console {
            epoll,
            signalfd,
            stdin_open,
            stdin_watched: stdin_open,
            pending: VecDeque::new(),
            escape: match mode {
                ConsoleMode::Native => Escape::Native(NativeEscape::default()),
                _ => Escape::Nspawn(EscapeDetector::default()),
            },
            track_size: terminal.is_raw(),
            watching_signals: false,
            stop_timeout: Duration::ZERO,
            graceful_stop: None,
            quiet: false,
            _terminal: terminal,
            _mask: mask,
        })
    }

    /// A termination signal (SIGINT, SIGTERM, SIGRTMIN+4) presses the ACPI power button and
    /// waits up to `timeout` for the guest to power off before stopping the VM at once, as a
    /// second such signal does. Zero stops at once.
    /// With `quiet`, the stop prints no status lines.
    pub fn set_stop_timeout(&mut self, timeout: Duration, quiet: bool) {
        self.stop_timeout = timeout;
        self.quiet = quiet;
    }

    /// Begin a graceful stop for `signo`: press the power button and start the wait. `false` if
    /// none can begin (none is configured, or one is under way): stop now.
    fn begin_graceful_stop(&mut self, machine: &Machine, signo: i32) -> bool {
        if self.stop_timeout.is_zero() || self.graceful_stop.is_some() {
            return false;
        }
        machine.press_power_button();
        if !self.quiet {
            status!(
                "Asking the guest to power off (ACPI power button); it has {} s, or send the signal again to stop it at once.",
                self.stop_timeout.as_secs_f64()
            );
        }
        self.graceful_stop = Some((signo, Instant::now() + self.stop_timeout));
        true
    }

    /// The epoll wait's timeout in milliseconds: until the graceful stop's deadline (rounded
    /// up), or -1 (none).
    fn wait_timeout_ms(&self) -> i32 {
        match self.graceful_stop {
            None => -1,
            Some((_, deadline)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
            }
        }
    }

    /// Watch helper `index`'s pidfd for the rest of the run: its exit ends the machine's run.
    pub fn watch_helper(&mut self, pidfd: RawFd, index: usize) -> Result<(), Error> {
        epoll_ctl(
            &self.epoll,
            ControlOperation::Add,
            pidfd,
            TOKEN_HELPER + index as u64,
        )
        .map_err(|e| Error::Host("epoll", e))
    }

    /// Watch the graphical console's window: its closing (`fd` becomes readable) ends the VM
    /// as Ctrl-] three times does.
    pub fn watch_window(&mut self, fd: RawFd) -> Result<(), Error> {
        epoll_ctl(&self.epoll, ControlOperation::Add, fd, TOKEN_WINDOW_CLOSED)
            .map_err(|e| Error::Host("epoll", e))
    }

    /// The terminal's size as (columns, rows), when the guest is to follow it.
    pub fn window_size(&self) -> Option<(u16, u16)> {
        if !self.track_size {
            return None;
        }
        crate::console::window_size(libc::STDIN_FILENO)
    }

    /// Run until `machine` stops or the user or a signal ends the VM.
    pub fn run(&mut self, machine: &Machine) -> Result<Outcome, Error> {
        let ep = |e| Error::Host("epoll", e);
        epoll_ctl(
            &self.epoll,
            ControlOperation::Add,
            machine.events.wake.as_raw_fd(),
            TOKEN_MACHINE,
        )
        .map_err(ep)?;
        epoll_ctl(
            &self.epoll,
            ControlOperation::Add,
            machine.input_drained.as_raw_fd(),
            TOKEN_INPUT_DRAINED,
        )
        .map_err(ep)?;
        let outcome = self.wait(machine);
        let _ = epoll_ctl(
            &self.epoll,
            ControlOperation::Delete,
            machine.events.wake.as_raw_fd(),
            0,
        );
        let _ = epoll_ctl(
            &self.epoll,
            ControlOperation::Delete,
            machine.input_drained.as_raw_fd(),
            0,
        );
        outcome
    }

    fn wait(&mut self, machine: &Machine) -> Result<Outcome, Error> {
        // Input typed before a reset goes to the new machine.
        self.feed_guest(machine);
        // As does a change of size while the old one stopped.
        self.resize(machine);
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            if let Some((signo, deadline)) = self.graceful_stop
                && Instant::now() >= deadline
            {
                if !self.quiet {
                    status!(
                        "The guest did not power off within {} s; stopping it.",
                        self.stop_timeout.as_secs_f64()
                    );
                }
                return Ok(Outcome::Exit(VmExit::Signal(signo)));
            }
            let n = match self.epoll.wait(self.wait_timeout_ms(), &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Host("epoll_wait", e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_MACHINE => {
                        let _ = machine.events.wake.read();
                        match machine.events.take() {
                            Some(MachineEvent::PowerOff) => {
                                return Ok(Outcome::Exit(VmExit::PowerOff));
                            }
                            Some(MachineEvent::Reset) => {
                                // Asked to power off, the guest went down and reset instead
                                // (a reboot under way when the button was pressed loses the
                                // press): the user wants it stopped, not booted again.
                                if let Some((signo, _)) = self.graceful_stop {
                                    if !self.quiet {
                                        status!(
                                            "The guest reset itself instead of powering off; stopping it."
                                        );
                                    }
                                    return Ok(Outcome::Exit(VmExit::Signal(signo)));
                                }
                                return Ok(Outcome::Reset);
                            }
                            Some(MachineEvent::Failed(why)) => return Err(Error::Guest(why)),
                            Some(MachineEvent::NothingToBoot) => {
                                return Err(Error::Firmware(
                                    crate::firmware_watch::GAVE_UP.to_owned(),
                                    libc::ENOEXEC,
                                ));
                            }
                            None => {}
                        }
                    }
                    TOKEN_SIGNAL => {
                        while let Some(signo) = self.read_signal() {
                            if signo == libc::SIGWINCH {
                                self.resize(machine);
                            } else if !asks_graceful_stop(signo)
                                || !self.begin_graceful_stop(machine, signo)
                            {
                                return Ok(Outcome::Exit(VmExit::Signal(signo)));
                            }
                        }
                    }
                    TOKEN_STDIN => {
                        if self.read_stdin() {
                            return Ok(Outcome::Exit(VmExit::ConsoleKill));
                        }
                        self.feed_guest(machine);
                    }
                    TOKEN_WINDOW_CLOSED => return Ok(Outcome::Exit(VmExit::ConsoleKill)),
                    TOKEN_INPUT_DRAINED => {
                        let _ = machine.input_drained.read();
                        self.feed_guest(machine);
                    }
                    t if t >= TOKEN_HELPER => {
                        return Ok(Outcome::HelperExited((t - TOKEN_HELPER) as usize));
                    }
                    _ => {}
                }
            }
        }
    }

    fn read_signal(&self) -> Option<i32> {
        read_signal(self.signalfd.as_raw_fd())
    }

    /// The run is ending: from now on a termination signal (the user's second Ctrl-C or
    /// SIGTERM, or a first one during a stop that began otherwise) ends the process at once,
    /// with exit status 128 + the signal's number as a shell reports a process the signal
    /// killed (130 for SIGINT, 143 for SIGTERM), after restoring the terminal and removing the
    /// run directory. Whatever is holding the stop up (a device back end, a terminal that
    /// does not read) is then left to the process's exit. Called once per run; the thread
    /// lives until the process ends.
    pub fn stopping(&mut self) {
        if self.watching_signals {
            return;
        }
        // The watcher gets its own descriptor: this one closes when the console is dropped.
        let Ok(fd) = self.signalfd.try_clone() else {
            return;
        };
        let watcher = std::thread::Builder::new()
            .name("stop-signals".into())
            .spawn(move || {
                loop {
                    let mut p = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the duration of the call.
                    if unsafe { libc::poll(&mut p, 1, -1) } < 0
                        && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                    {
                        return;
                    }
                    while let Some(signo) = read_signal(fd.as_raw_fd()) {
                        if signo != libc::SIGWINCH {
                            crate::cleanup::exit_now(128 + signo);
                        }
                    }
                }
            });
        self.watching_signals = watcher.is_ok();
    }

    /// Read what the user typed; true if it completed the escape sequence.
    fn read_stdin(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        // SAFETY: `buf` is a writable buffer of its full length.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(
                e.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ) {
                return false;
            }
        }
        if n <= 0 {
            // End of input (or an error that will repeat): stop watching, keep the VM running.
            self.set_stdin_watched(false);
            self.stdin_open = false;
            return false;
        }
        let typed = &buf[..n as usize];
        match &mut self.escape {
            Escape::Nspawn(e) => {
                if e.feed(typed, Instant::now()) {
                    return true;
                }
                self.pending.extend(typed);
            }
            Escape::Native(e) => {
                if e.feed(typed, &mut self.pending) {
                    return true;
                }
            }
        }
        if self.pending.len() >= MAX_PENDING_INPUT {
            self.set_stdin_watched(false);
        }
        false
    }

    fn set_stdin_watched(&mut self, watched: bool) {
        if !self.stdin_open || self.stdin_watched == watched {
            return;
        }
        let op = if watched {
            ControlOperation::Add
        } else {
            ControlOperation::Delete
        };
        if epoll_ctl(&self.epoll, op, libc::STDIN_FILENO, TOKEN_STDIN).is_ok() {
            self.stdin_watched = watched;
        }
    }

    /// Pass the terminal's size on to the guest's virtio console.
    fn resize(&self, machine: &Machine) {
        if let (ConsoleInput::Virtio(port), Some((cols, rows))) =
            (&machine.input, self.window_size())
        {
            port.set_size(cols, rows);
        }
    }

    /// Move pending input into the guest's console as far as it has room.
    fn feed_guest(&mut self, machine: &Machine) {
        if self.pending.is_empty() {
            return;
        }
        let (a, _) = self.pending.as_slices();
        let taken = machine.input.enqueue(a);
        self.pending.drain(..taken);
        if self.pending.len() < MAX_PENDING_INPUT {
            self.set_stdin_watched(true);
        }
    }
}
