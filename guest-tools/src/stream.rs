//! Bulk transfers over vsock streams: a deterministic pseudo-random byte stream, hashed with
//! SHA-256 on both sides.

use std::io::{self, ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use crate::sha256::{Sha256, hex};
use crate::sys::{SockType, VMADDR_CID_ANY, Vsock};

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
    let mut sock = connect_retrying(cid, port, Instant::now() + timeout)
        .map_err(|e| describe(&format!("connect to {cid}:{port}"), &e))?;
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

/// Result of `recv`.
pub struct Received {
    pub peer_cid: u32,
    pub peer_port: u32,
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
    let (mut sock, peer_cid, peer_port) = loop {
        match listener.accept() {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            other => break other.map_err(|e| describe("accept", &e))?,
        }
    };
    drop(listener);
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
        peer_cid,
        peer_port,
        bytes: got,
        sha256: hex(&hash.finish()),
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
