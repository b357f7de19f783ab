//! A TPM 2.0 with the CRB interface (TCG PC Client Platform TPM Profile), backed by swtpm.
//!
//! [`Swtpm`] speaks swtpm's control protocol; [`Tpm`] owns it for the whole run with a thread
//! (`tpm`) that runs the TPM commands; [`TpmCrb`] is one machine's register file. A vCPU never
//! waits on swtpm: a START hands a copy of the command to the thread under a short lock, and
//! the guest polls START until the thread's response is in the buffer. Whatever the guest or
//! swtpm get wrong (command sizes, short or oversized responses, a back end that stops
//! answering) ends that command with a TPM error response; a back end that is gone fails every
//! later command the same way and sets the CRB's `tpmSts`.

pub mod command;
mod crb;
mod swtpm;
#[cfg(test)]
mod tests;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub use crb::TpmCrb;
use swtpm::{
    CAP_CANCEL_TPM_CMD, CMD_CANCEL_TPM_CMD, CMD_INIT, CMD_RESET_TPMESTABLISHED, CMD_SHUTDOWN, Ctrl,
    IoFail,
};
pub use swtpm::{CTRL_TIMEOUT, Swtpm};

/// The locality 0 register file.
pub const CRB_BASE: u64 = 0xfed4_0000;
/// 4 KiB: registers, then the command/response buffer at +0x80 (3968 bytes).
pub const CRB_SIZE: u64 = 0x1000;
/// Offset of the command/response buffer in the register file.
pub const BUFFER_OFFSET: u64 = 0x80;
/// Size of the command/response buffer: the largest command or response.
pub const BUFFER_SIZE: usize = (CRB_SIZE - BUFFER_OFFSET) as usize;
/// How long one TPM command may take. Generous: key generation under nested emulation can take
/// tens of seconds, and the guest's driver waits longer still.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the rest of a response may take once its first bytes arrived.
const RESPONSE_REST_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the TPM and its back end.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// A socket operation failed.
    #[error("swtpm, {0}: {1}")]
    Io(&'static str, std::io::Error),
    /// swtpm closed the connection.
    #[error("swtpm closed the connection during {0}")]
    Closed(&'static str),
    /// swtpm did not answer in time.
    #[error("swtpm did not answer {0} within {1:?}")]
    Timeout(&'static str, Duration),
    /// swtpm answered a control command with an error result.
    #[error("swtpm failed {0}: result {1:#x}")]
    Result(&'static str, u32),
    /// swtpm answered nonsense.
    #[error("swtpm, {0}: {1}")]
    Protocol(&'static str, String),
    /// swtpm lacks control commands rvmspawn needs.
    #[error("swtpm lacks the control commands {0}")]
    Capabilities(String),
    /// The TPM thread could not be started.
    #[error("cannot start the TPM thread: {0}")]
    Thread(std::io::Error),
    /// A command the VMM gave is malformed.
    #[error("invalid TPM command: {0}")]
    Command(String),
    /// The back end failed earlier, or the TPM was shut down.
    #[error("the TPM back end is gone")]
    Gone,
}

impl TpmError {
    /// The errno the process should exit with.
    pub fn errno(&self) -> i32 {
        match self {
            TpmError::Io(_, e) | TpmError::Thread(e) => e.raw_os_error().unwrap_or(libc::EIO),
            TpmError::Closed(_) | TpmError::Gone => libc::EPIPE,
            TpmError::Timeout(..) => libc::ETIMEDOUT,
            TpmError::Result(..) | TpmError::Protocol(..) => libc::EPROTO,
            TpmError::Capabilities(_) => libc::EOPNOTSUPP,
            TpmError::Command(_) => libc::EINVAL,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; should it, the state is plain data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `command` may go to the TPM: its header's size matches the bytes given (at least a
/// header, at most the buffer) and its tag is one of TPM 2.0's. Otherwise the response code
/// that refuses it. The tag check also keeps swtpm's own framing (a command starting with
/// TPM2_SEND_COMMAND, which chooses a locality) out of the guest's reach.
pub(crate) fn check_command(command: &[u8]) -> Result<(), u32> {
    let size = command::header_size(command).ok_or(command::TPM_RC_COMMAND_SIZE)? as usize;
    if !(command::HEADER_LEN..=BUFFER_SIZE).contains(&size) || size != command.len() {
        return Err(command::TPM_RC_COMMAND_SIZE);
    }
    match command::header_tag(command) {
        Some(command::TPM_ST_NO_SESSIONS | command::TPM_ST_SESSIONS) => Ok(()),
        _ => Err(command::TPM_RC_BAD_TAG),
    }
}

/// Whether `response` is one whole response that fits the buffer.
pub(crate) fn check_response(response: &[u8]) -> Result<(), String> {
    let size = command::header_size(response)
        .ok_or_else(|| format!("a {}-byte response", response.len()))?;
    if response.len() < command::HEADER_LEN || response.len() > BUFFER_SIZE {
        return Err(format!("a {}-byte response", response.len()));
    }
    if size as usize != response.len() {
        return Err(format!(
            "a {}-byte response whose header says {size}",
            response.len()
        ));
    }
    Ok(())
}

/// A command waiting for the thread.
struct Job {
    ticket: u64,
    command: Vec<u8>,
}

/// What a finished command produced: the response, or why there is none (the device then
/// answers `TPM_RC_FAILURE`).
type Outcome = Result<Vec<u8>, String>;

#[derive(Default)]
struct State {
    next_ticket: u64,
    queued: Option<Job>,
    running: Option<u64>,
    /// The ticket whose cancellation the guest asked for.
    cancel: Option<u64>,
    done: Option<(u64, Outcome)>,
    /// The back end failed: every later command fails at once.
    failed: bool,
    stop: bool,
    /// The guest asked for the establishment flag to be reset.
    reset_established: bool,
    /// The TPM's establishment flag, as last read.
    established: bool,
}

/// A back end that answers synchronously, for the fuzz target: the response for a command.
pub type Responder = Box<dyn FnMut(&[u8]) -> Vec<u8> + Send>;

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Signalled when a command finishes.
    finished: Condvar,
    /// Signalled when there is work for the thread.
    work: Condvar,
    /// Wakes the thread from waiting on swtpm (a cancellation, the end).
    wake: EventFd,
    responder: Option<Mutex<Responder>>,
    /// The largest command swtpm takes (its buffer size, at most [`BUFFER_SIZE`]).
    max_command: usize,
}

impl State {
    /// The outcome of `ticket`, if it finished (or will never finish).
    fn outcome(&mut self, ticket: u64) -> Option<Outcome> {
        if self.done.as_ref().is_some_and(|(t, _)| *t == ticket) {
            return self.done.take().map(|(_, o)| o);
        }
        let queued = self.queued.as_ref().is_some_and(|j| j.ticket == ticket);
        if queued || self.running == Some(ticket) {
            return None;
        }
        // Abandoned by a reset or the end of the run: nothing will answer it.
        Some(Err("the command was abandoned".into()))
    }
}

impl Shared {
    /// Queue `command`; returns its ticket. A back end that failed answers at once.
    pub(crate) fn submit(&self, command: Vec<u8>) -> u64 {
        let mut s = lock(&self.state);
        s.next_ticket += 1;
        let ticket = s.next_ticket;
        if command.len() > self.max_command {
            let r = command::error_response(command::TPM_RC_COMMAND_SIZE);
            s.done = Some((ticket, Ok(r)));
            return ticket;
        }
        if s.failed || s.stop {
            s.done = Some((ticket, Err("the back end is gone".into())));
            return ticket;
        }
        if let Some(r) = &self.responder {
            let response = (lock(r))(&command);
            s.done = Some((ticket, check_response(&response).map(|()| response)));
            return ticket;
        }
        s.queued = Some(Job { ticket, command });
        self.work.notify_all();
        ticket
    }

    /// The outcome of `ticket`, if it finished (or will never finish).
    pub(crate) fn outcome(&self, ticket: u64) -> Option<Outcome> {
        lock(&self.state).outcome(ticket)
    }

    /// Ask for `ticket` to be cancelled. A command still queued ends at once with
    /// TPM_RC_CANCELED; a running one is cancelled by the thread (CMD_CANCEL_TPM_CMD).
    pub(crate) fn cancel(&self, ticket: u64) {
        let mut s = lock(&self.state);
        if s.queued.as_ref().is_some_and(|j| j.ticket == ticket) {
            s.queued = None;
            s.done = Some((
                ticket,
                Ok(command::error_response(command::TPM_RC_CANCELED)),
            ));
            self.finished.notify_all();
        } else if s.running == Some(ticket) {
            s.cancel = Some(ticket);
            let _ = self.wake.write(1);
        }
    }

    /// The guest's request to reset the establishment flag.
    pub(crate) fn reset_established(&self) {
        let mut s = lock(&self.state);
        if self.responder.is_none() && !s.failed && !s.stop {
            s.reset_established = true;
            self.work.notify_all();
        }
    }

    /// (the back end failed, the establishment flag).
    pub(crate) fn status(&self) -> (bool, bool) {
        let s = lock(&self.state);
        (s.failed, s.established)
    }
}

/// The TPM of a whole run: the back end and the thread ("tpm", devices::thread::ThreadKind::Tpm)
/// that runs the guest's commands. One per run; every machine (every boot) gets a fresh CRB
/// device from it.
pub struct Tpm {
    shared: Arc<Shared>,
    ctrl: Arc<Mutex<Ctrl>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm").finish_non_exhaustive()
    }
}

impl Tpm {
    /// Start the TPM thread on `backend`.
    pub fn new(backend: Swtpm) -> Result<Arc<Tpm>, TpmError> {
        let Swtpm {
            mut ctrl,
            data,
            buffer_size,
        } = backend;
        let established = ctrl.established(CTRL_TIMEOUT)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                established,
                ..State::default()
            }),
            finished: Condvar::new(),
            work: Condvar::new(),
            wake: EventFd::new(EFD_NONBLOCK).map_err(TpmError::Thread)?,
            responder: None,
            max_command: (buffer_size as usize).min(BUFFER_SIZE),
        });
        let ctrl = Arc::new(Mutex::new(ctrl));
        let thread = {
            let (shared, ctrl) = (shared.clone(), ctrl.clone());
            std::thread::Builder::new()
                .name("tpm".into())
                .spawn(move || run(&shared, &ctrl, &data))
                .map_err(TpmError::Thread)?
        };
        Ok(Arc::new(Tpm {
            shared,
            ctrl,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// A TPM whose commands `responder` answers synchronously, on the vCPU's own call (the fuzz
    /// target's back end). No thread, no swtpm: reset and shutdown do nothing.
    #[doc(hidden)]
    pub fn with_responder(responder: Responder) -> Result<Arc<Tpm>, TpmError> {
        let (a, _) = UnixStream::pair().map_err(|e| TpmError::Io("socketpair", e))?;
        Ok(Arc::new(Tpm {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                finished: Condvar::new(),
                work: Condvar::new(),
                wake: EventFd::new(EFD_NONBLOCK).map_err(TpmError::Thread)?,
                responder: Some(Mutex::new(responder)),
                max_command: BUFFER_SIZE,
            }),
            ctrl: Arc::new(Mutex::new(Ctrl {
                sock: a,
                caps: 0,
                owed: 0,
            })),
            thread: Mutex::new(None),
        }))
    }

    /// The CRB register file for one machine (registers in their reset state). Implements
    /// `devices::BusDevice` (attach at CRB_BASE, CRB_SIZE on the MMIO bus) and
    /// `devices::AcpiDevice` (TPM2 table and the DSDT device `\_SB_.TPM0`).
    pub fn crb(self: &Arc<Self>) -> TpmCrb {
        TpmCrb::new(self.shared.clone())
    }

    /// A platform reset before a reboot: ends or cancels a command still running, then CMD_INIT
    /// (PCRs reset, state kept). The VMM calls it before every boot after the first.
    ///
    /// A command still running is abandoned (its response is dropped) and cancelled; swtpm
    /// answers CMD_INIT only once that command ends, so then the wait is bounded by
    /// [`COMMAND_TIMEOUT`], else by [`CTRL_TIMEOUT`].
    pub fn reset(&self) -> Result<(), TpmError> {
        if self.shared.responder.is_some() {
            return Ok(());
        }
        let busy = {
            let mut s = lock(&self.shared.state);
            if s.failed || s.stop {
                return Err(TpmError::Gone);
            }
            s.queued = None;
            s.reset_established = false;
            if let Some(t) = s.running {
                s.cancel = Some(t);
                let _ = self.shared.wake.write(1);
            }
            s.running.is_some()
        };
        let timeout = if busy { COMMAND_TIMEOUT } else { CTRL_TIMEOUT };
        let mut ctrl = lock(&self.ctrl);
        let result = ctrl
            .exchange(CMD_INIT, &0u32.to_be_bytes(), 0, timeout)
            .and_then(|_| ctrl.established(CTRL_TIMEOUT));
        let mut s = lock(&self.shared.state);
        match result {
            Ok(established) => {
                s.established = established;
                Ok(())
            }
            Err(e) => {
                s.failed = true;
                Err(e)
            }
        }
    }

    /// Run one TPM command for the VMM itself (measured boot), synchronously, before the
    /// vCPUs run; returns the whole response.
    pub fn execute(&self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        check_command(command).map_err(|rc| {
            TpmError::Command(format!(
                "{} bytes, refused with response code {rc:#x}",
                command.len()
            ))
        })?;
        let ticket = self.shared.submit(command.to_vec());
        let deadline = Instant::now() + COMMAND_TIMEOUT + RESPONSE_REST_TIMEOUT;
        let mut s = lock(&self.shared.state);
        loop {
            if let Some(outcome) = s.outcome(ticket) {
                return outcome.map_err(|why| TpmError::Protocol("a TPM command", why));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TpmError::Timeout("a TPM command", COMMAND_TIMEOUT));
            }
            s = self
                .shared
                .finished
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// CMD_SHUTDOWN so swtpm saves its volatile state; stops the thread. The VMM calls it when
    /// the run ends (Drop does it too if it was not called; calling twice is harmless).
    pub fn shutdown(&self) -> Result<(), TpmError> {
        let (was_stopped, failed) = {
            let mut s = lock(&self.shared.state);
            let was = s.stop;
            s.stop = true;
            s.queued = None;
            self.shared.work.notify_all();
            self.shared.finished.notify_all();
            (was, s.failed)
        };
        let _ = self.shared.wake.write(1);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
        if was_stopped || self.shared.responder.is_some() {
            return Ok(());
        }
        let mut ctrl = lock(&self.ctrl);
        let result = ctrl.exchange(CMD_SHUTDOWN, &[], 0, CTRL_TIMEOUT);
        if failed {
            result.and(Err(TpmError::Gone))
        } else {
            result.map(|_| ())
        }
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The TPM thread: runs queued commands one at a time, and the guest's establishment-flag
/// resets, until the TPM shuts down.
fn run(shared: &Shared, ctrl: &Mutex<Ctrl>, data: &UnixStream) {
    crate::thread::started(crate::thread::ThreadKind::Tpm);
    loop {
        let job = {
            let mut s = lock(&shared.state);
            loop {
                if s.stop {
                    return;
                }
                if s.reset_established {
                    break None;
                }
                if let Some(job) = s.queued.take() {
                    s.running = Some(job.ticket);
                    s.cancel = None;
                    break Some(job);
                }
                s = shared.work.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let Some(job) = job else {
            reset_established(shared, ctrl);
            continue;
        };
        let outcome = run_command(shared, ctrl, data, &job);
        let mut s = lock(&shared.state);
        s.running = None;
        s.cancel = None;
        let outcome = match outcome {
            Ok(response) => Ok(response),
            Err(Failure::Bad(why)) => Err(why),
            Err(Failure::Stopped) => return,
            Err(Failure::Gone(why)) => {
                s.failed = true;
                crate::report(&format!("The TPM stopped working: {why}."));
                Err(why)
            }
        };
        s.done = Some((job.ticket, outcome));
        shared.finished.notify_all();
    }
}

/// The guest's resetEstablishmentBit: CMD_RESET_TPMESTABLISHED for locality 0 (swtpm decides
/// whether that locality may), then the flag read back.
fn reset_established(shared: &Shared, ctrl: &Mutex<Ctrl>) {
    let established = {
        let mut c = lock(ctrl);
        let _ = c.exchange(CMD_RESET_TPMESTABLISHED, &[0, 0, 0, 0], 0, CTRL_TIMEOUT);
        c.established(CTRL_TIMEOUT)
    };
    let mut s = lock(&shared.state);
    s.reset_established = false;
    match established {
        Ok(e) => s.established = e,
        Err(_) => s.failed = true,
    }
}

enum Failure {
    /// This response is unusable; the channel is not.
    Bad(String),
    /// The back end is gone.
    Gone(String),
    /// The TPM is shutting down.
    Stopped,
}

/// Send `job` to swtpm and read its response, sending CMD_CANCEL_TPM_CMD if the guest asks.
fn run_command(
    shared: &Shared,
    ctrl: &Mutex<Ctrl>,
    data: &UnixStream,
    job: &Job,
) -> Result<Vec<u8>, Failure> {
    let gone = |what: &str, e: IoFail| Failure::Gone(format!("{what}: {e:?}"));
    // What a previous, broken response left behind must not be taken for this one.
    swtpm::drain(data).map_err(|e| gone("the data channel", e))?;
    // One write: swtpm reads a command with a single read.
    swtpm::write_all(data, &job.command, Instant::now() + CTRL_TIMEOUT)
        .map_err(|e| gone("sending a command", e))?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let mut header = [0u8; command::HEADER_LEN];
    let mut cancel_sent = false;
    loop {
        match swtpm::read_exact(
            data,
            &mut header[..1],
            Some(shared.wake.as_raw_fd()),
            deadline,
        ) {
            Ok(()) => break,
            Err(IoFail::Woken) => {
                let _ = shared.wake.read();
                let (stop, cancel) = {
                    let s = lock(&shared.state);
                    (s.stop, s.cancel == Some(job.ticket))
                };
                if stop {
                    return Err(Failure::Stopped);
                }
                if cancel && !cancel_sent {
                    cancel_sent = true;
                    send_cancel(ctrl);
                }
            }
            Err(IoFail::Timeout) => {
                return Err(Failure::Gone(format!(
                    "no response within {COMMAND_TIMEOUT:?}"
                )));
            }
            Err(e) => return Err(gone("reading a response", e)),
        }
    }
    let rest_deadline = Instant::now() + RESPONSE_REST_TIMEOUT;
    let bad = |e: IoFail| match e {
        IoFail::Timeout => Failure::Bad("a short response".into()),
        e => gone("reading a response", e),
    };
    swtpm::read_exact(data, &mut header[1..], None, rest_deadline).map_err(bad)?;
    let size = command::header_size(&header).unwrap_or(0) as usize;
    if !(command::HEADER_LEN..=BUFFER_SIZE).contains(&size) {
        return Err(Failure::Bad(format!(
            "a response whose header says {size} bytes"
        )));
    }
    let mut response = vec![0u8; size];
    response[..command::HEADER_LEN].copy_from_slice(&header);
    swtpm::read_exact(
        data,
        &mut response[command::HEADER_LEN..],
        None,
        rest_deadline,
    )
    .map_err(bad)?;
    // swtpm writes a response at once: anything more is the rest of a response longer than
    // its header said.
    let extra = swtpm::drain(data).map_err(|e| gone("the data channel", e))?;
    if extra > 0 {
        return Err(Failure::Bad(format!(
            "a response {extra} bytes longer than its header says"
        )));
    }
    if cancel_sent {
        let _ = lock(ctrl).settle(CTRL_TIMEOUT);
    }
    Ok(response)
}

/// CMD_CANCEL_TPM_CMD, if swtpm has it. Its reply comes once the command ends: owed until then.
fn send_cancel(ctrl: &Mutex<Ctrl>) {
    let mut c = lock(ctrl);
    if c.caps & CAP_CANCEL_TPM_CMD != 0 && c.send(CMD_CANCEL_TPM_CMD, &[], CTRL_TIMEOUT).is_ok() {
        c.owed += 1;
    }
}
