//! swtpm's control protocol (its `--ctrl type=unixio` channel) and the bounded socket I/O
//! both channels use.
//!
//! A control request is a big-endian u32 command code and its payload; the reply is a u32
//! result (0 = success) and, on success, the command's payload. On failure swtpm sends the
//! result alone, except for a few commands whose reply has a fixed size either way: after a
//! failure the channel is drained of whatever came with it. The TPM's own commands go over a
//! separate data channel: one end of a socket pair handed to swtpm with `CMD_SET_DATAFD`.
//!
//! swtpm serves one request at a time, data or control: a control request sent while a TPM
//! command runs is answered when that command ends.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::TpmError;

pub(crate) const CMD_GET_CAPABILITY: u32 = 1;
pub(crate) const CMD_INIT: u32 = 2;
pub(crate) const CMD_SHUTDOWN: u32 = 3;
pub(crate) const CMD_GET_TPMESTABLISHED: u32 = 4;
pub(crate) const CMD_SET_LOCALITY: u32 = 5;
pub(crate) const CMD_CANCEL_TPM_CMD: u32 = 9;
pub(crate) const CMD_RESET_TPMESTABLISHED: u32 = 11;
pub(crate) const CMD_STOP: u32 = 14;
pub(crate) const CMD_SET_DATAFD: u32 = 16;
pub(crate) const CMD_SET_BUFFERSIZE: u32 = 17;

/// Capability bits of CMD_GET_CAPABILITY's reply.
pub(crate) const CAP_INIT: u32 = 1 << 0;
pub(crate) const CAP_SHUTDOWN: u32 = 1 << 1;
pub(crate) const CAP_GET_TPMESTABLISHED: u32 = 1 << 2;
pub(crate) const CAP_SET_LOCALITY: u32 = 1 << 3;
pub(crate) const CAP_CANCEL_TPM_CMD: u32 = 1 << 5;
pub(crate) const CAP_RESET_TPMESTABLISHED: u32 = 1 << 7;
pub(crate) const CAP_STOP: u32 = 1 << 10;
pub(crate) const CAP_SET_DATAFD: u32 = 1 << 12;
pub(crate) const CAP_SET_BUFFERSIZE: u32 = 1 << 13;

/// The capabilities rvmspawn needs, with the names an error gives them.
const NEEDED: [(u32, &str); 8] = [
    (CAP_INIT, "INIT"),
    (CAP_SHUTDOWN, "SHUTDOWN"),
    (CAP_GET_TPMESTABLISHED, "GET_TPMESTABLISHED"),
    (CAP_SET_LOCALITY, "SET_LOCALITY"),
    (CAP_RESET_TPMESTABLISHED, "RESET_TPMESTABLISHED"),
    (CAP_STOP, "STOP"),
    (CAP_SET_DATAFD, "SET_DATAFD"),
    (CAP_SET_BUFFERSIZE, "SET_BUFFERSIZE"),
];

/// How long a control request may take when no TPM command runs.
pub const CTRL_TIMEOUT: Duration = Duration::from_secs(10);

/// The name of control command `cmd`, for messages.
pub(crate) fn name(cmd: u32) -> &'static str {
    match cmd {
        CMD_GET_CAPABILITY => "CMD_GET_CAPABILITY",
        CMD_INIT => "CMD_INIT",
        CMD_SHUTDOWN => "CMD_SHUTDOWN",
        CMD_GET_TPMESTABLISHED => "CMD_GET_TPMESTABLISHED",
        CMD_SET_LOCALITY => "CMD_SET_LOCALITY",
        CMD_CANCEL_TPM_CMD => "CMD_CANCEL_TPM_CMD",
        CMD_RESET_TPMESTABLISHED => "CMD_RESET_TPMESTABLISHED",
        CMD_STOP => "CMD_STOP",
        CMD_SET_DATAFD => "CMD_SET_DATAFD",
        CMD_SET_BUFFERSIZE => "CMD_SET_BUFFERSIZE",
        _ => "an unknown control command",
    }
}

/// Why a bounded socket operation failed.
#[derive(Debug)]
pub(crate) enum IoFail {
    /// The deadline passed.
    Timeout,
    /// The peer closed the connection.
    Closed,
    /// A system call failed.
    Os(std::io::Error),
    /// The wake descriptor was signalled (only when one was given).
    Woken,
}

impl IoFail {
    pub(crate) fn into_error(self, what: &'static str, timeout: Duration) -> TpmError {
        match self {
            IoFail::Timeout => TpmError::Timeout(what, timeout),
            IoFail::Closed => TpmError::Closed(what),
            IoFail::Os(e) => TpmError::Io(what, e),
            IoFail::Woken => TpmError::Closed(what),
        }
    }
}

/// Wait until `fd` is ready for `events`, or `wake` is readable, or `deadline` passes.
pub(crate) fn wait(
    fd: RawFd,
    events: i16,
    wake: Option<RawFd>,
    deadline: Instant,
) -> Result<(), IoFail> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(IoFail::Timeout);
        }
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        let mut fds = [
            libc::pollfd {
                fd,
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call; a
        // negative descriptor is ignored by poll.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(IoFail::Os(e));
        }
        if fds[1].revents != 0 {
            return Err(IoFail::Woken);
        }
        if fds[0].revents & (events | libc::POLLHUP | libc::POLLERR) != 0 {
            return Ok(());
        }
    }
}

/// One receive that does not wait: Some(bytes received), None if nothing is there now,
/// Err(Closed) if the peer has gone.
fn recv_now(sock: &UnixStream, buf: &mut [u8]) -> Result<Option<usize>, IoFail> {
    loop {
        // SAFETY: `buf` is valid writable memory of `buf.len()` bytes.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            return Ok(Some(n as usize));
        }
        if n == 0 {
            return Err(IoFail::Closed);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock => return Ok(None),
            std::io::ErrorKind::Interrupted => {}
            _ => return Err(IoFail::Os(e)),
        }
    }
}

/// Read exactly `buf.len()` bytes from `sock` by `deadline`.
pub(crate) fn read_exact(
    sock: &UnixStream,
    buf: &mut [u8],
    wake: Option<RawFd>,
    deadline: Instant,
) -> Result<(), IoFail> {
    let mut done = 0;
    while done < buf.len() {
        wait(sock.as_raw_fd(), libc::POLLIN, wake, deadline)?;
        done += recv_now(sock, &mut buf[done..])?.unwrap_or(0);
    }
    Ok(())
}

/// Write all of `buf` to `sock` by `deadline`.
pub(crate) fn write_all(sock: &UnixStream, buf: &[u8], deadline: Instant) -> Result<(), IoFail> {
    let mut done = 0;
    while done < buf.len() {
        wait(sock.as_raw_fd(), libc::POLLOUT, None, deadline)?;
        let rest = &buf[done..];
        // SAFETY: `rest` is valid readable memory of `rest.len()` bytes. MSG_NOSIGNAL: a
        // closed peer is an EPIPE error, not a signal.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            done += n as usize;
        } else {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EPIPE) | Some(libc::ECONNRESET) => return Err(IoFail::Closed),
                Some(libc::EINTR) | Some(libc::EAGAIN) => {}
                _ => return Err(IoFail::Os(e)),
            }
        }
    }
    Ok(())
}

/// Discard whatever `sock` holds right now; Err(Closed) if the peer has gone.
pub(crate) fn drain(sock: &UnixStream) -> Result<usize, IoFail> {
    let mut buf = [0u8; 512];
    let mut total = 0;
    while let Some(n) = recv_now(sock, &mut buf)? {
        total += n;
    }
    Ok(total)
}

/// The control channel.
#[derive(Debug)]
pub(crate) struct Ctrl {
    pub(crate) sock: UnixStream,
    /// The capabilities swtpm reported.
    pub(crate) caps: u32,
    /// Replies swtpm owes us (a CMD_CANCEL_TPM_CMD sent while a command ran, answered when it
    /// ends): read before the next request.
    pub(crate) owed: u32,
}

impl Ctrl {
    /// Read the replies still owed, each a bare result, by `timeout`.
    pub(crate) fn settle(&mut self, timeout: Duration) -> Result<(), TpmError> {
        let deadline = Instant::now() + timeout;
        while self.owed > 0 {
            let mut r = [0u8; 4];
            read_exact(&self.sock, &mut r, None, deadline)
                .map_err(|e| e.into_error(name(CMD_CANCEL_TPM_CMD), timeout))?;
            self.owed -= 1;
        }
        Ok(())
    }

    /// Send `cmd` with `payload` without waiting for its reply.
    pub(crate) fn send(&self, cmd: u32, payload: &[u8], timeout: Duration) -> Result<(), TpmError> {
        let mut msg = cmd.to_be_bytes().to_vec();
        msg.extend_from_slice(payload);
        write_all(&self.sock, &msg, Instant::now() + timeout)
            .map_err(|e| e.into_error(name(cmd), timeout))
    }

    /// Read the reply to `cmd`: its result and, on success, `reply_len` more bytes.
    pub(crate) fn reply(
        &mut self,
        cmd: u32,
        reply_len: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, TpmError> {
        let deadline = Instant::now() + timeout;
        let fail = |e: IoFail| e.into_error(name(cmd), timeout);
        let mut result = [0u8; 4];
        read_exact(&self.sock, &mut result, None, deadline).map_err(fail)?;
        let result = u32::from_be_bytes(result);
        if result != 0 {
            // Some replies have their full size even on failure: nothing of it may be taken
            // for the next reply.
            let _ = drain(&self.sock);
            return Err(TpmError::Result(name(cmd), result));
        }
        let mut rest = vec![0u8; reply_len];
        read_exact(&self.sock, &mut rest, None, deadline).map_err(fail)?;
        Ok(rest)
    }

    /// Send `cmd` and return its successful reply's payload of `reply_len` bytes.
    pub(crate) fn exchange(
        &mut self,
        cmd: u32,
        payload: &[u8],
        reply_len: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, TpmError> {
        self.settle(timeout)?;
        self.send(cmd, payload, timeout)?;
        self.reply(cmd, reply_len, timeout)
    }

    /// The TPM's establishment flag.
    pub(crate) fn established(&mut self, timeout: Duration) -> Result<bool, TpmError> {
        let r = self.exchange(CMD_GET_TPMESTABLISHED, &[], 4, timeout)?;
        Ok(r[0] & 1 != 0)
    }
}

/// The run-long connection to swtpm's control channel (and the data channel it creates).
#[derive(Debug)]
pub struct Swtpm {
    pub(crate) ctrl: Ctrl,
    pub(crate) data: UnixStream,
    /// The TPM's command buffer size, as swtpm settled it.
    pub(crate) buffer_size: u32,
}

impl Swtpm {
    /// Take over a connected control connection to `swtpm socket --tpm2 --ctrl type=unixio,fd=3`:
    /// CMD_GET_CAPABILITY (error naming every missing capability), a socketpair for the data
    /// channel handed over with CMD_SET_DATAFD, CMD_STOP, CMD_SET_BUFFERSIZE, CMD_INIT,
    /// CMD_SET_LOCALITY(0). Does NOT send TPM2_Startup. Blocking; bounded by timeouts.
    pub fn connect(ctrl: UnixStream) -> Result<Swtpm, TpmError> {
        Self::connect_within(ctrl, CTRL_TIMEOUT)
    }

    /// [`Swtpm::connect`] with each step bounded by `timeout`.
    pub(crate) fn connect_within(ctrl: UnixStream, timeout: Duration) -> Result<Swtpm, TpmError> {
        let mut ctrl = Ctrl {
            sock: ctrl,
            caps: 0,
            owed: 0,
        };
        // Older swtpm answers a u64 of capabilities, newer a result and a u32: the same bytes.
        let caps = ctrl.exchange(CMD_GET_CAPABILITY, &[], 4, timeout)?;
        ctrl.caps = u32::from_be_bytes([caps[0], caps[1], caps[2], caps[3]]);
        let missing: Vec<&str> = NEEDED
            .iter()
            .filter(|(bit, _)| ctrl.caps & bit == 0)
            .map(|(_, name)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(TpmError::Capabilities(missing.join(", ")));
        }

        let (ours, theirs) = UnixStream::pair().map_err(|e| TpmError::Io("socketpair", e))?;
        ctrl.sock
            .send_with_fd(&CMD_SET_DATAFD.to_be_bytes()[..], theirs.as_raw_fd())
            .map_err(|e| TpmError::Io(name(CMD_SET_DATAFD), e.into()))?;
        drop(theirs);
        ctrl.reply(CMD_SET_DATAFD, 0, timeout)?;

        ctrl.exchange(CMD_STOP, &[], 0, timeout)?;
        let wanted = super::BUFFER_SIZE as u32;
        let sizes = ctrl.exchange(CMD_SET_BUFFERSIZE, &wanted.to_be_bytes(), 12, timeout)?;
        let buffer_size = u32::from_be_bytes([sizes[0], sizes[1], sizes[2], sizes[3]]);
        if buffer_size == 0 || buffer_size > wanted {
            return Err(TpmError::Protocol(
                name(CMD_SET_BUFFERSIZE),
                format!("buffer size {buffer_size} (asked for {wanted})"),
            ));
        }
        ctrl.exchange(CMD_INIT, &0u32.to_be_bytes(), 0, timeout)?;
        // Locality 0, padded to the 4 bytes of the request structure.
        ctrl.exchange(CMD_SET_LOCALITY, &[0, 0, 0, 0], 0, timeout)?;
        Ok(Swtpm {
            ctrl,
            data: ours,
            buffer_size,
        })
    }
}
