//! Bulk transfers over vsock streams, over the Unix sockets that are the host side of the
//! userspace vsock device, or over TCP (the network tests): a deterministic pseudo-random byte
//! stream, hashed with SHA-256 on both sides.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::notify::printable;
use crate::sha256::{Sha256, hex};
use crate::sys::{self, SockType, VMADDR_CID_ANY, Vsock};

/// The default seed of the sender's stream ("RVMSPAWN" in ASCII).
pub const DEFAULT_SEED: u64 = 0x5256_4d53_5041_574e;

/// Chunk size for reads and writes (a multiple of 8: the stream is made of 64-bit words).
const CHUNK: usize = 64 * 1024;

/// xorshift64 (shifts 13, 7, 17): each step's new state, little-endian, is the next 8 bytes of
/// the stream, truncated to the requested length. In Python:
/// `x ^= x << 13 & M; x ^= x >> 7; x ^= x << 17 & M; out += x.to_bytes(8, "little")`
/// with `M = 2**64 - 1`, starting from the seed (0 is replaced by `DEFAULT_SEED`).
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 { DEFAULT_SEED } else { seed })
    }

    /// Fill `buf`, whose length must be a multiple of 8 except for the stream's last chunk.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Why a transfer failed, as one phrase for a status line.
fn describe(what: &str, e: &io::Error) -> String {
    if e.kind() == ErrorKind::WouldBlock {
        format!("{what}: timed out")
    } else {
        format!("{what}: {e}")
    }
}

/// Bytes per second, for information only.
pub fn rate(bytes: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        (bytes as f64 / secs) as u64
    } else {
        0
    }
}

/// Retry connecting while the peer is not there yet (no listener: ECONNRESET; its transport
/// not up: ECONNREFUSED, ETIMEDOUT), until `deadline`.
fn connect_retrying(cid: u32, port: u32, deadline: Instant) -> io::Result<Vsock> {
    loop {
        // Each try may take the time that is left (at least 1 s; the kernel's default is 2 s).
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = left.max(Duration::from_secs(1));
        match Vsock::connect(SockType::Stream, cid, port, Some(attempt)) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(e.raw_os_error(), Some(104 | 111 | 110))
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Generate the first `bytes` bytes of the stream from `seed` chunk by chunk, hand each chunk
/// to `sink` (with the count of bytes before it) and return the SHA-256 of them all.
fn produce(
    bytes: u64,
    seed: u64,
    mut sink: impl FnMut(&[u8], u64) -> Result<(), String>,
) -> Result<String, String> {
    let mut rng = XorShift::new(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < bytes {
        let n = (bytes - done).min(CHUNK as u64) as usize;
        rng.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        sink(&buf[..n], done)?;
        done += n as u64;
    }
    Ok(hex(&hash.finish()))
}

/// The SHA-256 of the first `bytes` bytes of the stream from `seed`.
pub fn hash(bytes: u64, seed: u64) -> String {
    produce(bytes, seed, |_, _| Ok(())).expect("no sink errors")
}

/// A connected stream socket, whichever the transport: what a transfer needs of it.
pub trait Conn: Read + Write {
    /// Reads and writes fail with `WouldBlock` after `timeout` without progress.
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()>;
    /// No more writes: the peer reads end-of-file once it has everything sent before.
    fn shutdown_write(&self) -> io::Result<()>;
}

impl Conn for Vsock {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        Vsock::set_timeouts(self, timeout)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        Vsock::shutdown_write(self)
    }
}

impl Conn for UnixStream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        sys::set_timeouts(self.as_fd(), timeout)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Conn for TcpStream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        sys::set_timeouts(self.as_fd(), timeout)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Result of `send`: bytes, digest, time spent writing.
pub struct Sent {
    pub bytes: u64,
    pub sha256: String,
    pub elapsed: Duration,
}

/// Connect to `cid:port`, write `bytes` bytes of the stream from `seed`, shut down writing and
/// wait until the peer closes (so the data has surely arrived before, say, the guest powers
/// off). `timeout`: for connecting (retried meanwhile) and for each read or write.
pub fn send(cid: u32, port: u32, bytes: u64, seed: u64, timeout: Duration) -> Result<Sent, String> {
    let sock = connect_retrying(cid, port, Instant::now() + timeout)
        .map_err(|e| describe(&format!("connect to {cid}:{port}"), &e))?;
    send_on(sock, bytes, seed, timeout)
}

/// `send` to guest port `port` through the userspace vsock device, whose host side listens on
/// the Unix socket `path`: connect, `CONNECT <port>\n`, expect `OK <local port>\n`, and the rest
/// is the guest's stream. The device closes the connection when the guest refuses it (or is not
/// listening yet), so that is retried too until `timeout`.
pub fn send_unix(
    path: &Path,
    port: u32,
    bytes: u64,
    seed: u64,
    timeout: Duration,
) -> Result<Sent, String> {
    let sock = connect_unix_retrying(path, port, Instant::now() + timeout)
        .map_err(|e| format!("connect to {} port {port}: {e}", path.display()))?;
    send_on(sock, bytes, seed, timeout)
}

/// `send` over TCP to `addr`. Connecting is retried until `timeout` while the network is not
/// there yet or nobody listens (refused, unreachable, timed out), as it may be while a guest's
/// interface or the host's end of it is still being configured.
pub fn send_tcp(
    addr: SocketAddr,
    bytes: u64,
    seed: u64,
    timeout: Duration,
) -> Result<Sent, String> {
    let sock = connect_tcp_retrying(addr, Instant::now() + timeout)
        .map_err(|e| describe(&format!("connect to {addr}"), &e))?;
    send_on(sock, bytes, seed, timeout)
}

/// Whether a failed TCP connect may work later: ECONNRESET, ECONNREFUSED, ETIMEDOUT,
/// ENETUNREACH, EHOSTUNREACH, EADDRNOTAVAIL (no address yet), or std's own connect timeout.
fn tcp_retryable(e: &io::Error) -> bool {
    e.kind() == ErrorKind::TimedOut
        || matches!(e.raw_os_error(), Some(104 | 111 | 110 | 101 | 113 | 99))
}

fn connect_tcp_retrying(addr: SocketAddr, deadline: Instant) -> io::Result<TcpStream> {
    loop {
        // As for vsock: each try may take the time that is left, at least 1 s.
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&addr, left.max(Duration::from_secs(1))) {
            Ok(s) => return Ok(s),
            Err(e) if tcp_retryable(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e),
        }
    }
}

fn send_on(mut sock: impl Conn, bytes: u64, seed: u64, timeout: Duration) -> Result<Sent, String> {
    sock.set_timeouts(timeout)
        .map_err(|e| describe("setsockopt", &e))?;
    let start = Instant::now();
    let sha256 = produce(bytes, seed, |chunk, before| {
        sock.write_all(chunk)
            .map_err(|e| describe(&format!("write after {before} bytes"), &e))
    })?;
    let elapsed = start.elapsed();
    sock.shutdown_write()
        .map_err(|e| describe("shutdown", &e))?;
    // The peer closes once it has read everything; what it might send is ignored.
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(104) => break, // ECONNRESET: closed too
            Err(e) => return Err(describe("waiting for the peer to close", &e)),
        }
    }
    Ok(Sent {
        bytes,
        sha256,
        elapsed,
    })
}

/// Longest reply to `CONNECT` accepted, newline included (the device's longest, `OK 4294967295`,
/// takes 14).
const MAX_REPLY: usize = 64;

/// How one try at the device's handshake went wrong.
enum Attempt {
    /// Worth trying again: nothing listens yet, on the host or in the guest.
    Retry(String),
    Fail(String),
}

fn connect_unix_retrying(path: &Path, port: u32, deadline: Instant) -> Result<UnixStream, String> {
    loop {
        // As for vsock: each try may take the time that is left, at least 1 s.
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = left.max(Duration::from_secs(1));
        match connect_unix(path, port, attempt) {
            Ok(s) => return Ok(s),
            Err(Attempt::Retry(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(Attempt::Retry(e) | Attempt::Fail(e)) => return Err(e),
        }
    }
}

fn connect_unix(path: &Path, port: u32, timeout: Duration) -> Result<UnixStream, Attempt> {
    // The device answers a connection the guest refused by closing it: end-of-file before a
    // reply, or EPIPE/ECONNRESET when the close comes before it has read the whole line.
    let refused = || Attempt::Retry("connection refused by the guest".into());
    let mut sock = UnixStream::connect(path).map_err(|e| match e.raw_os_error() {
        Some(2 | 111) => Attempt::Retry(e.to_string()), // ENOENT, ECONNREFUSED: no device yet
        _ => Attempt::Fail(e.to_string()),
    })?;
    sock.set_timeouts(timeout)
        .map_err(|e| Attempt::Fail(describe("setsockopt", &e)))?;
    sock.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| match e.raw_os_error() {
            Some(32 | 104) => refused(),
            _ => Attempt::Fail(describe("write CONNECT", &e)),
        })?;
    match read_reply(&mut sock) {
        Ok(Some(line)) if line.starts_with(b"OK ") => Ok(sock),
        Ok(Some(line)) => Err(Attempt::Fail(format!(
            "unexpected reply '{}' to CONNECT {port} (expected 'OK <port>')",
            printable(&line)
        ))),
        Ok(None) => Err(refused()),
        Err(e) if e.raw_os_error() == Some(104) => Err(refused()),
        Err(e) => Err(Attempt::Fail(describe("read the reply to CONNECT", &e))),
    }
}

/// The device's reply line, without its newline, read a byte at a time so that none of the
/// stream after it is taken. `Ok(None)`: closed before a whole line, which is how it refuses.
fn read_reply(sock: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_REPLY {
        match sock.read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) if byte[0] == b'\n' => return Ok(Some(line)),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        ErrorKind::InvalidData,
        format!("no newline in its first {MAX_REPLY} bytes"),
    ))
}

/// Result of `recv`.
pub struct Received {
    /// The peer's address: `CID:PORT` for vsock, `IP:PORT` for TCP; a Unix peer (the device)
    /// has none.
    pub peer: Option<String>,
    pub bytes: u64,
    pub sha256: String,
    pub elapsed: Duration,
}

/// Listen on `port` (any CID), call `listening` once the socket is ready, accept one
/// connection and read it to end-of-file. `timeout`: for the accept and for each read.
pub fn recv(port: u32, timeout: Duration, listening: impl FnOnce()) -> Result<Received, String> {
    let listener = Vsock::listen(VMADDR_CID_ANY, port)
        .map_err(|e| describe(&format!("listen on port {port}"), &e))?;
    listener
        .set_timeouts(timeout)
        .map_err(|e| describe("setsockopt", &e))?;
    listening();
    let (sock, peer_cid, peer_port) = accept(|| listener.accept())?;
    drop(listener);
    recv_on(sock, Some(format!("{peer_cid}:{peer_port}")), timeout)
}

/// `recv` over TCP: listen on `addr`, call `listening` with the address actually bound (port 0
/// picks one), accept one connection and read it to end-of-file.
pub fn recv_tcp(
    addr: SocketAddr,
    timeout: Duration,
    listening: impl FnOnce(SocketAddr),
) -> Result<Received, String> {
    let listen_err = |e: &io::Error| describe(&format!("listen on {addr}"), e);
    let listener = TcpListener::bind(addr).map_err(|e| listen_err(&e))?;
    let local = listener.local_addr().map_err(|e| listen_err(&e))?;
    // SO_RCVTIMEO bounds a TCP accept too.
    sys::set_timeouts(listener.as_fd(), timeout).map_err(|e| describe("setsockopt", &e))?;
    listening(local);
    let (sock, peer) = accept(|| listener.accept())?;
    drop(listener);
    recv_on(sock, Some(peer.to_string()), timeout)
}

/// `recv` on a Unix listener at `path`, where the userspace vsock device connects when the
/// guest connects to the host port it stands for. A socket file already at `path` (left by an
/// earlier run) is replaced; the file is removed again before returning, so that it is gone
/// once the result is known.
pub fn recv_unix(
    path: &Path,
    timeout: Duration,
    listening: impl FnOnce(),
) -> Result<Received, String> {
    let listen_err = |e: &io::Error| describe(&format!("listen on {}", path.display()), e);
    remove_stale_socket(path).map_err(|e| listen_err(&e))?;
    let listener = UnixListener::bind(path).map_err(|e| listen_err(&e))?;
    let _remove = RemoveOnDrop(path);
    sys::set_timeouts(listener.as_fd(), timeout).map_err(|e| describe("setsockopt", &e))?;
    listening();
    let (sock, _) = accept(|| listener.accept())?;
    drop(listener);
    recv_on(sock, None, timeout)
}

/// Remove a socket file at `path`, but nothing else: a regular file there is a mistake in the
/// command line, not ours to delete (bind then fails with EADDRINUSE).
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// Accept one connection, again after a signal.
fn accept<T>(mut accept_once: impl FnMut() -> io::Result<T>) -> Result<T, String> {
    loop {
        match accept_once() {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            other => return other.map_err(|e| describe("accept", &e)),
        }
    }
}

fn recv_on(
    mut sock: impl Conn,
    peer: Option<String>,
    timeout: Duration,
) -> Result<Received, String> {
    sock.set_timeouts(timeout)
        .map_err(|e| describe("setsockopt", &e))?;
    let start = Instant::now();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                got += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(describe(&format!("read after {got} bytes"), &e)),
        }
    }
    Ok(Received {
        peer,
        bytes: got,
        sha256: hex(&hash.finish()),
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::thread;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// A socket path for one test, in the temporary directory, free of an earlier run's file.
    fn temp_socket(name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("rvmspawn-guest-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    /// Play the device's part of a host client's handshake up to the reply: its CONNECT line.
    fn connect_line(conn: &mut UnixStream) -> Vec<u8> {
        read_reply(conn).unwrap().expect("a CONNECT line")
    }

    #[test]
    fn unix_round_trip_through_a_stand_in_device() {
        let device = temp_socket("device");
        // The device's listener for guest connections to host port 5001.
        let guest_port = temp_socket("device_5001");
        // A socket file left behind by an earlier listener: recv_unix replaces it.
        drop(UnixListener::bind(&guest_port).unwrap());
        // Neither a multiple of the chunk size nor of the stream's 8-byte words.
        let (bytes, seed) = ((3 << 20) + 5, 7);

        let (listening_tx, listening_rx) = mpsc::channel();
        let receiver = {
            let path = guest_port.clone();
            thread::spawn(move || recv_unix(&path, TIMEOUT, || listening_tx.send(()).unwrap()))
        };
        let sender = {
            let path = device.clone();
            thread::spawn(move || send_unix(&path, 5000, bytes, seed, TIMEOUT))
        };

        // The device comes up after the sender started trying (no socket file yet), and the
        // guest refuses the first connection (closed without a reply).
        thread::sleep(Duration::from_millis(300));
        let listener = UnixListener::bind(&device).unwrap();
        let (mut refused, _) = listener.accept().unwrap();
        assert_eq!(connect_line(&mut refused), b"CONNECT 5000");
        drop(refused);
        let (mut host, _) = listener.accept().unwrap();
        assert_eq!(connect_line(&mut host), b"CONNECT 5000");

        // The guest's side: connect to the receiver, as the device does for a guest
        // connecting to host port 5001, and relay the stream to it.
        listening_rx.recv().unwrap();
        let mut to_receiver = UnixStream::connect(&guest_port).unwrap();
        host.write_all(b"OK 1073741824\n").unwrap();
        let relayed = io::copy(&mut host, &mut to_receiver).unwrap();
        to_receiver.shutdown(Shutdown::Write).unwrap();
        // The receiver closes once it has read everything; then the sender may finish.
        assert_eq!(to_receiver.read(&mut [0u8; 1]).unwrap(), 0);
        drop(host);

        let sent = sender.join().unwrap().unwrap();
        let received = receiver.join().unwrap().unwrap();
        let expected = hash(bytes, seed);
        assert_eq!(relayed, bytes);
        assert_eq!((sent.bytes, &sent.sha256), (bytes, &expected));
        assert_eq!((received.bytes, &received.sha256), (bytes, &expected));
        assert_eq!(received.peer, None);
        assert!(!guest_port.exists(), "recv_unix removes its socket file");
        std::fs::remove_file(&device).unwrap();
    }

    #[test]
    fn tcp_round_trip_on_loopback() {
        // Neither a multiple of the chunk size nor of the stream's 8-byte words.
        let (bytes, seed) = ((2 << 20) + 3, 9);
        let (listening_tx, listening_rx) = mpsc::channel();
        let receiver = thread::spawn(move || {
            recv_tcp("127.0.0.1:0".parse().unwrap(), TIMEOUT, |a| {
                listening_tx.send(a).unwrap()
            })
        });
        let addr = listening_rx.recv().unwrap();
        assert_ne!(addr.port(), 0, "the port actually bound is reported");
        let sent = send_tcp(addr, bytes, seed, TIMEOUT).unwrap();
        let received = receiver.join().unwrap().unwrap();
        let expected = hash(bytes, seed);
        assert_eq!((sent.bytes, &sent.sha256), (bytes, &expected));
        assert_eq!((received.bytes, &received.sha256), (bytes, &expected));
        let peer = received.peer.expect("a TCP peer has an address");
        assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    }

    #[test]
    fn tcp_connect_is_retried_until_the_deadline() {
        // A port nobody listens on: every try is refused at once, so only retrying makes the
        // sender take the whole timeout.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let timeout = Duration::from_millis(1200);
        let start = Instant::now();
        let err = send_tcp(addr, 1024, 1, timeout).err().unwrap();
        assert!(
            start.elapsed() >= timeout,
            "gave up after {:?}",
            start.elapsed()
        );
        assert!(err.starts_with(&format!("connect to {addr}: ")), "{err}");
        assert!(err.contains("refused"), "{err}");
    }

    #[test]
    fn tcp_listen_on_an_address_in_use_fails_naming_it() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = recv_tcp(addr, TIMEOUT, |_| panic!("not listening"))
            .err()
            .unwrap();
        assert!(err.starts_with(&format!("listen on {addr}: ")), "{err}");
    }

    #[test]
    fn a_reply_other_than_ok_fails_with_it() {
        let device = temp_socket("device-err");
        let listener = UnixListener::bind(&device).unwrap();
        let fake = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            assert_eq!(connect_line(&mut conn), b"CONNECT 5000");
            conn.write_all(b"ERR no\n").unwrap();
            // Held open: the sender must fail on the line, not on the close.
            conn
        });
        let err = send_unix(&device, 5000, 1024, 1, TIMEOUT).err().unwrap();
        assert!(
            err.contains("unexpected reply 'ERR no' to CONNECT 5000"),
            "{err}"
        );
        drop(fake.join().unwrap());
        std::fs::remove_file(&device).unwrap();
    }

    #[test]
    fn refused_until_the_deadline() {
        let device = temp_socket("device-refuses");
        let listener = UnixListener::bind(&device).unwrap();
        // Ends the loop below once the sender has given up.
        sys::set_timeouts(listener.as_fd(), Duration::from_millis(700)).unwrap();
        let fake = thread::spawn(move || {
            let mut tries = 0;
            while let Ok((mut conn, _)) = listener.accept() {
                assert_eq!(connect_line(&mut conn), b"CONNECT 5000");
                tries += 1;
            }
            tries
        });
        let err = send_unix(&device, 5000, 1024, 1, Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(err.ends_with("connection refused by the guest"), "{err}");
        assert!(fake.join().unwrap() > 1, "retried");
        std::fs::remove_file(&device).unwrap();
    }

    #[test]
    fn reply_without_newline_is_cut_short() {
        let mut long: &[u8] = &[b'O'; 100];
        assert!(read_reply(&mut long).is_err());
        assert_eq!(
            long.len(),
            100 - MAX_REPLY,
            "read no further than {MAX_REPLY} bytes"
        );
        let mut partial: &[u8] = b"OK 12";
        assert_eq!(read_reply(&mut partial).unwrap(), None);
        let mut then_data: &[u8] = b"OK 12\nDATA";
        assert_eq!(read_reply(&mut then_data).unwrap(), Some(b"OK 12".to_vec()));
        assert_eq!(then_data, b"DATA");
    }

    #[test]
    fn recv_unix_leaves_other_files_alone() {
        let path = temp_socket("not-a-socket");
        std::fs::write(&path, b"keep").unwrap();
        let err = recv_unix(&path, TIMEOUT, || panic!("not listening"))
            .err()
            .unwrap();
        assert!(
            err.starts_with(&format!("listen on {}", path.display())),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn stream_is_deterministic_and_chunking_does_not_matter() {
        let mut whole = vec![0u8; 100];
        XorShift::new(DEFAULT_SEED).fill(&mut whole);
        let mut parts = vec![0u8; 100];
        let mut rng = XorShift::new(DEFAULT_SEED);
        rng.fill(&mut parts[..16]);
        rng.fill(&mut parts[16..64]);
        rng.fill(&mut parts[64..]);
        assert_eq!(whole, parts);
        // The first word, worked out by hand from the definition.
        let mut x = DEFAULT_SEED;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        assert_eq!(whole[..8], x.to_le_bytes());
        // Seed 0 means the default; another seed gives another stream.
        let mut zero = vec![0u8; 100];
        XorShift::new(0).fill(&mut zero);
        assert_eq!(zero, whole);
        let mut other = vec![0u8; 100];
        XorShift::new(2).fill(&mut other);
        assert_ne!(other, whole);
    }

    #[test]
    fn digest_of_the_default_stream() {
        // Worked out independently with Python's hashlib over the same xorshift64 stream.
        assert_eq!(
            hash(1 << 20, DEFAULT_SEED),
            "87dfe5c0b14af9215dfb5ea8f45097e30ff8e7e796b15df32fb84b5b3521fdb7"
        );
    }
}
