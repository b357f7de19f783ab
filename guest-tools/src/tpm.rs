//! TPM 2.0 commands spoken raw, for the TPM tests: the guest writes a command to
//! `/dev/tpmrm0` and reads the response, so what it reports is what the TPM (through rvmspawn's
//! CRB device and swtpm) answered, with no TPM software stack in between. Only what the tests
//! need: GetRandom, PCR_Extend and PCR_Read on the SHA-256 bank, and an NV index holding a
//! short text (NV_ReadPublic, NV_DefineSpace, NV_Write, NV_Read).
//!
//! The wire format is the TCG TPM 2.0 Library, Part 3 (commands) and Part 2 (structures):
//! big-endian, a 10-byte header (tag, size, command or response code), handles, an
//! authorization area for commands with sessions, then the parameters. Every authorization
//! here is a password session (`TPM_RS_PW`) with an empty password, which is what a freshly
//! manufactured TPM's owner hierarchy and the NV index defined here have.
//!
//! Responses are checked as a hostile peer's: the header's size must be the bytes received,
//! the response code must be success, and every size inside must fit in what is left.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
#[cfg(test)]
use std::os::unix::net::UnixStream;

const TPM_ST_NO_SESSIONS: u16 = 0x8001;
const TPM_ST_SESSIONS: u16 = 0x8002;

const TPM_CC_NV_DEFINE_SPACE: u32 = 0x0000_012a;
const TPM_CC_NV_WRITE: u32 = 0x0000_0137;
const TPM_CC_NV_READ: u32 = 0x0000_014e;
const TPM_CC_NV_READ_PUBLIC: u32 = 0x0000_0169;
const TPM_CC_GET_RANDOM: u32 = 0x0000_017b;
const TPM_CC_PCR_READ: u32 = 0x0000_017e;
const TPM_CC_PCR_EXTEND: u32 = 0x0000_0182;

/// The password authorization session.
const TPM_RS_PW: u32 = 0x4000_0009;
/// The owner hierarchy, under which the NV index is defined.
const TPM_RH_OWNER: u32 = 0x4000_0001;
const TPM_ALG_SHA256: u16 = 0x000b;

/// `TPM_RC_HANDLE` for the command's first handle: NV_ReadPublic's answer for an index that
/// is not defined.
const TPM_RC_HANDLE_1: u32 = 0x0000_018b;

/// TPMA_NV: written with the index's own (empty) password or the owner's; read likewise; no
/// dictionary-attack lockout. An ordinary index (TPM_NT 0).
const TPMA_NV_OWNERWRITE: u32 = 1 << 1;
const TPMA_NV_AUTHWRITE: u32 = 1 << 2;
const TPMA_NV_OWNERREAD: u32 = 1 << 17;
const TPMA_NV_AUTHREAD: u32 = 1 << 18;
const TPMA_NV_NO_DA: u32 = 1 << 25;
const NV_ATTRIBUTES: u32 =
    TPMA_NV_OWNERWRITE | TPMA_NV_AUTHWRITE | TPMA_NV_OWNERREAD | TPMA_NV_AUTHREAD | TPMA_NV_NO_DA;

/// The NV indices an owner may define (TPM_HT_NV_INDEX, 0x01xxxxxx).
const NV_INDEX_FIRST: u32 = 0x0100_0000;
const NV_INDEX_LAST: u32 = 0x01ff_ffff;

/// The longest text stored: below every TPM's `MAX_NV_BUFFER_SIZE`, so one NV_Write and one
/// NV_Read move it all.
pub const MAX_NV_TEXT: usize = 512;
/// PCRs 0 to 23 (a PC Client TPM).
pub const PCR_COUNT: u32 = 24;
/// A SHA-256 digest.
pub const DIGEST_LEN: usize = 32;
/// The largest response read: the kernel's TPM buffer (rvmspawn's CRB buffer is smaller).
const MAX_RESPONSE: usize = 4096;
const HEADER_LEN: usize = 10;
/// GetRandom asks for at most this much per command (the TPM may give less).
const RANDOM_CHUNK: usize = 32;

/// Why a TPM command failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// Writing the command or reading the response failed.
    Io(String),
    /// The TPM answered with this response code.
    Code(u32),
    /// The response does not parse.
    Malformed(String),
    /// The request itself is out of range.
    Usage(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "TPM I/O: {e}"),
            Error::Code(rc) => write!(f, "TPM response code {rc:#x}"),
            Error::Malformed(e) => write!(f, "malformed TPM response: {e}"),
            Error::Usage(e) => write!(f, "{e}"),
        }
    }
}

fn malformed(what: impl Into<String>) -> Error {
    Error::Malformed(what.into())
}

/// Where commands go: a TPM character device (`/dev/tpmrm0`, `/dev/tpm0`), which takes one
/// whole command per write and gives one whole response per read, or a stream socket to
/// `swtpm chardev` (the unit tests), where the response is read as header, then the rest.
pub enum Transport {
    Device(File),
    #[cfg(test)]
    Stream(UnixStream),
}

impl Transport {
    /// Open a TPM character device for reading and writing.
    pub fn open(path: &str) -> Result<Transport, Error> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(Transport::Device)
            .map_err(|e| Error::Io(format!("{path}: {e}")))
    }

    /// Send one command and return its whole response, checked for a header whose size is
    /// the bytes received.
    fn exchange(&mut self, command: &[u8]) -> Result<Vec<u8>, Error> {
        let io = |what: &str, e: std::io::Error| Error::Io(format!("{what}: {e}"));
        let response = match self {
            Transport::Device(file) => {
                let written = file.write(command).map_err(|e| io("write", e))?;
                if written != command.len() {
                    return Err(Error::Io(format!(
                        "wrote {written} of {} bytes",
                        command.len()
                    )));
                }
                let mut buf = vec![0u8; MAX_RESPONSE];
                let n = file.read(&mut buf).map_err(|e| io("read", e))?;
                buf.truncate(n);
                buf
            }
            #[cfg(test)]
            Transport::Stream(sock) => {
                sock.write_all(command).map_err(|e| io("write", e))?;
                let mut buf = vec![0u8; HEADER_LEN];
                sock.read_exact(&mut buf).map_err(|e| io("read", e))?;
                let size = be32(&buf[2..6]) as usize;
                if !(HEADER_LEN..=MAX_RESPONSE).contains(&size) {
                    return Err(malformed(format!("header size {size}")));
                }
                buf.resize(size, 0);
                sock.read_exact(&mut buf[HEADER_LEN..])
                    .map_err(|e| io("read", e))?;
                buf
            }
        };
        if response.len() < HEADER_LEN {
            return Err(malformed(format!("{} bytes", response.len())));
        }
        let size = be32(&response[2..6]) as usize;
        if size != response.len() {
            return Err(malformed(format!(
                "header size {size}, {} bytes received",
                response.len()
            )));
        }
        Ok(response)
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A command being built: header first, its size filled in by `finish`.
struct Command(Vec<u8>);

impl Command {
    fn new(tag: u16, code: u32) -> Command {
        let mut c = Command(Vec::with_capacity(64));
        c.u16(tag).u32(0).u32(code);
        c
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A TPM2B: a 16-bit size, then the bytes (at most `MAX_NV_TEXT` here, so it fits).
    fn sized(&mut self, bytes: &[u8]) -> &mut Self {
        self.u16(bytes.len() as u16);
        self.0.extend_from_slice(bytes);
        self
    }

    /// The authorization area of one password session with an empty password: its size,
    /// then TPMS_AUTH_COMMAND (handle, empty nonce, no attributes, empty password).
    fn password_session(&mut self) -> &mut Self {
        self.u32(4 + 2 + 1 + 2)
            .u32(TPM_RS_PW)
            .sized(&[])
            .u8(0)
            .sized(&[])
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.0);
        let size = (v.len() as u32).to_be_bytes();
        v[2..6].copy_from_slice(&size);
        v
    }
}

/// Reads a response's fields, each checked against what is left.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        if n > self.data.len() {
            return Err(malformed(format!(
                "{what}: {n} bytes wanted, {} left",
                self.data.len()
            )));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, Error> {
        self.take(2, what).map(be16)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        self.take(4, what).map(be32)
    }

    fn sized(&mut self, what: &str) -> Result<&'a [u8], Error> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }
}

/// The parameters of a successful response. With sessions, the response has a 32-bit
/// parameter size after the header (these commands return no handles), then the parameters,
/// then the session area, which is not looked at.
fn parameters(response: &[u8]) -> Result<Reader<'_>, Error> {
    // `exchange` made sure of the header.
    let tag = be16(&response[0..2]);
    let rc = be32(&response[6..10]);
    if rc != 0 {
        return Err(Error::Code(rc));
    }
    let mut r = Reader {
        data: &response[HEADER_LEN..],
    };
    match tag {
        TPM_ST_NO_SESSIONS => Ok(r),
        TPM_ST_SESSIONS => {
            let size = r.u32("parameterSize")? as usize;
            let params = r.take(size, "parameters")?;
            Ok(Reader { data: params })
        }
        other => Err(malformed(format!("tag {other:#x}"))),
    }
}

/// TPM2_GetRandom(bytes).
fn get_random_command(bytes: u16) -> Vec<u8> {
    Command::new(TPM_ST_NO_SESSIONS, TPM_CC_GET_RANDOM)
        .u16(bytes)
        .finish()
}

/// TPM2_PCR_Extend(pcr) with one SHA-256 digest.
pub fn pcr_extend_command(pcr: u32, digest: &[u8; DIGEST_LEN]) -> Vec<u8> {
    let mut c = Command::new(TPM_ST_SESSIONS, TPM_CC_PCR_EXTEND);
    c.u32(pcr).password_session().u32(1).u16(TPM_ALG_SHA256);
    c.0.extend_from_slice(digest);
    c.finish()
}

/// TPM2_PCR_Read of one PCR in the SHA-256 bank: a TPML_PCR_SELECTION with one selection of
/// 3 bitmap bytes (PCRs 0-23).
fn pcr_read_command(pcr: u32) -> Vec<u8> {
    let mut select = [0u8; 3];
    select[(pcr / 8) as usize] = 1 << (pcr % 8);
    let mut c = Command::new(TPM_ST_NO_SESSIONS, TPM_CC_PCR_READ);
    c.u32(1).u16(TPM_ALG_SHA256).u8(3);
    c.0.extend_from_slice(&select);
    c.finish()
}

fn nv_read_public_command(index: u32) -> Vec<u8> {
    Command::new(TPM_ST_NO_SESSIONS, TPM_CC_NV_READ_PUBLIC)
        .u32(index)
        .finish()
}

/// TPM2_NV_DefineSpace under the owner hierarchy: an empty password for the index, and its
/// TPM2B_NV_PUBLIC (index, name algorithm, attributes, no policy, size).
fn nv_define_space_command(index: u32, size: u16) -> Vec<u8> {
    let mut public = Command(Vec::new());
    public
        .u32(index)
        .u16(TPM_ALG_SHA256)
        .u32(NV_ATTRIBUTES)
        .sized(&[])
        .u16(size);
    let mut c = Command::new(TPM_ST_SESSIONS, TPM_CC_NV_DEFINE_SPACE);
    c.u32(TPM_RH_OWNER)
        .password_session()
        .sized(&[])
        .sized(&public.0);
    c.finish()
}

/// TPM2_NV_Write of `data` at offset 0, authorized by the index's own password.
fn nv_write_command(index: u32, data: &[u8]) -> Vec<u8> {
    Command::new(TPM_ST_SESSIONS, TPM_CC_NV_WRITE)
        .u32(index)
        .u32(index)
        .password_session()
        .sized(data)
        .u16(0)
        .finish()
}

/// TPM2_NV_Read of `size` bytes at offset 0, authorized by the index's own password.
fn nv_read_command(index: u32, size: u16) -> Vec<u8> {
    Command::new(TPM_ST_SESSIONS, TPM_CC_NV_READ)
        .u32(index)
        .u32(index)
        .password_session()
        .u16(size)
        .u16(0)
        .finish()
}

/// `bytes` random bytes, in as many GetRandom commands as it takes.
pub fn get_random(t: &mut Transport, bytes: usize) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(bytes.min(MAX_RESPONSE));
    while out.len() < bytes {
        let want = (bytes - out.len()).min(RANDOM_CHUNK);
        let response = t.exchange(&get_random_command(want as u16))?;
        let got = parameters(&response)?.sized("randomBytes")?;
        if got.is_empty() || got.len() > want {
            return Err(malformed(format!(
                "GetRandom gave {} bytes for {want}",
                got.len()
            )));
        }
        out.extend_from_slice(got);
    }
    Ok(out)
}

fn check_pcr(pcr: u32) -> Result<(), Error> {
    if pcr < PCR_COUNT {
        Ok(())
    } else {
        Err(Error::Usage(format!("PCR {pcr}: there are {PCR_COUNT}")))
    }
}

/// Extend `pcr`'s SHA-256 bank with `digest`.
pub fn pcr_extend(t: &mut Transport, pcr: u32, digest: &[u8; DIGEST_LEN]) -> Result<(), Error> {
    check_pcr(pcr)?;
    let response = t.exchange(&pcr_extend_command(pcr, digest))?;
    parameters(&response).map(|_| ())
}

/// `pcr`'s value in the SHA-256 bank.
pub fn pcr_read(t: &mut Transport, pcr: u32) -> Result<[u8; DIGEST_LEN], Error> {
    check_pcr(pcr)?;
    let response = t.exchange(&pcr_read_command(pcr))?;
    parse_pcr_read(&response, pcr)
}

/// PCR_Read's answer: the update counter, the selection it did read (which must be the one
/// PCR asked for: a PCR the TPM does not have comes back unselected), one digest.
fn parse_pcr_read(response: &[u8], pcr: u32) -> Result<[u8; DIGEST_LEN], Error> {
    let mut r = parameters(response)?;
    r.u32("pcrUpdateCounter")?;
    let selections = r.u32("pcrSelectionOut count")?;
    if selections != 1 {
        return Err(malformed(format!("{selections} PCR selections")));
    }
    let alg = r.u16("hash")?;
    let bitmap_len = r.u8("sizeofSelect")? as usize;
    let bitmap = r.take(bitmap_len, "pcrSelect")?;
    let byte = (pcr / 8) as usize;
    let selected = bitmap.get(byte).is_some_and(|b| b & (1 << (pcr % 8)) != 0);
    if alg != TPM_ALG_SHA256 || !selected {
        return Err(malformed(format!(
            "PCR {pcr} of the SHA-256 bank was not read (hash {alg:#x}, bitmap {bitmap:02x?})"
        )));
    }
    let digests = r.u32("pcrValues count")?;
    if digests != 1 {
        return Err(malformed(format!("{digests} PCR values")));
    }
    let digest = r.sized("pcrValue")?;
    digest
        .try_into()
        .map_err(|_| malformed(format!("a {}-byte SHA-256 PCR value", digest.len())))
}

fn check_index(index: u32) -> Result<(), Error> {
    if (NV_INDEX_FIRST..=NV_INDEX_LAST).contains(&index) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "NV index {index:#x}: not in {NV_INDEX_FIRST:#x}..{NV_INDEX_LAST:#x}"
        )))
    }
}

/// The data size of NV index `index`, or None if it is not defined.
fn nv_size(t: &mut Transport, index: u32) -> Result<Option<u16>, Error> {
    let response = t.exchange(&nv_read_public_command(index))?;
    match parameters(&response) {
        Err(Error::Code(TPM_RC_HANDLE_1)) => Ok(None),
        Err(e) => Err(e),
        Ok(mut r) => {
            let mut public = Reader {
                data: r.sized("nvPublic")?,
            };
            let got = public.u32("nvIndex")?;
            if got != index {
                return Err(malformed(format!("public area of {got:#x}")));
            }
            public.u16("nameAlg")?;
            public.u32("attributes")?;
            public.sized("authPolicy")?;
            public.u16("dataSize").map(Some)
        }
    }
}

/// Store `text` in NV index `index`: define the index (its size that of the text) if it is
/// not defined yet, then write the text. An index already defined must have the text's size.
pub fn nv_write(t: &mut Transport, index: u32, text: &[u8]) -> Result<(), Error> {
    check_index(index)?;
    if text.is_empty() || text.len() > MAX_NV_TEXT {
        return Err(Error::Usage(format!(
            "the text has 1 to {MAX_NV_TEXT} bytes, not {}",
            text.len()
        )));
    }
    let len = text.len() as u16;
    match nv_size(t, index)? {
        None => {
            let response = t.exchange(&nv_define_space_command(index, len))?;
            parameters(&response)?;
        }
        Some(size) if size == len => {}
        Some(size) => {
            return Err(Error::Usage(format!(
                "NV index {index:#x} holds {size} bytes; the text has {len}"
            )));
        }
    }
    let response = t.exchange(&nv_write_command(index, text))?;
    parameters(&response).map(|_| ())
}

/// The contents of NV index `index` (all of it).
pub fn nv_read(t: &mut Transport, index: u32) -> Result<Vec<u8>, Error> {
    check_index(index)?;
    let Some(size) = nv_size(t, index)? else {
        return Err(Error::Usage(format!("NV index {index:#x} is not defined")));
    };
    if size as usize > MAX_NV_TEXT {
        return Err(Error::Usage(format!(
            "NV index {index:#x} holds {size} bytes, more than {MAX_NV_TEXT}"
        )));
    }
    let response = t.exchange(&nv_read_command(index, size))?;
    let data = parameters(&response)?.sized("data")?;
    if data.len() != size as usize {
        return Err(malformed(format!("{} bytes of {size}", data.len())));
    }
    Ok(data.to_vec())
}

/// A hex string of exactly `N` bytes (either case).
pub fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim();
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// An NV index or PCR number: decimal or 0x-hex.
pub fn parse_number(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha256::{Sha256, hex};

    /// The password session as every command with sessions carries it.
    const PW: [u8; 13] = [0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 0, 0, 0];

    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn get_random_encoding() {
        assert_eq!(
            get_random_command(32),
            [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 32]
        );
    }

    #[test]
    fn pcr_extend_encoding() {
        let digest = [0xab; 32];
        let want = concat(&[
            &[0x80, 0x02, 0, 0, 0, 65, 0, 0, 0x01, 0x82],
            &[0, 0, 0, 16],
            &PW,
            &[0, 0, 0, 1, 0, 0x0b],
            &digest,
        ]);
        assert_eq!(pcr_extend_command(16, &digest), want);
        assert_eq!(want.len(), 65);
    }

    #[test]
    fn pcr_read_encoding_selects_one_pcr() {
        let head = [
            0x80, 0x01, 0, 0, 0, 20, 0, 0, 0x01, 0x7e, 0, 0, 0, 1, 0, 0x0b, 3,
        ];
        assert_eq!(pcr_read_command(0), concat(&[&head, &[1, 0, 0]]));
        assert_eq!(pcr_read_command(11), concat(&[&head, &[0, 0x08, 0]]));
        assert_eq!(pcr_read_command(16), concat(&[&head, &[0, 0, 1]]));
        assert_eq!(pcr_read_command(23), concat(&[&head, &[0, 0, 0x80]]));
    }

    #[test]
    fn nv_encodings() {
        let index = [0x01, 0x50, 0x00, 0x16];
        assert_eq!(
            nv_read_public_command(0x0150_0016),
            concat(&[&[0x80, 0x01, 0, 0, 0, 14, 0, 0, 0x01, 0x69], &index])
        );
        // attributes: OWNERWRITE|AUTHWRITE (0x6), OWNERREAD|AUTHREAD (0x60000), NO_DA.
        let public = concat(&[&index, &[0, 0x0b], &[0x02, 0x06, 0, 0x06], &[0, 0], &[0, 5]]);
        assert_eq!(public.len(), 14);
        assert_eq!(
            nv_define_space_command(0x0150_0016, 5),
            concat(&[
                &[0x80, 0x02, 0, 0, 0, 45, 0, 0, 0x01, 0x2a],
                &[0x40, 0, 0, 1],
                &PW,
                &[0, 0],
                &[0, 14],
                &public,
            ])
        );
        assert_eq!(
            nv_write_command(0x0150_0016, b"hello"),
            concat(&[
                &[0x80, 0x02, 0, 0, 0, 40, 0, 0, 0x01, 0x37],
                &index,
                &index,
                &PW,
                &[0, 5],
                b"hello",
                &[0, 0],
            ])
        );
        assert_eq!(
            nv_read_command(0x0150_0016, 5),
            concat(&[
                &[0x80, 0x02, 0, 0, 0, 35, 0, 0, 0x01, 0x4e],
                &index,
                &index,
                &PW,
                &[0, 5, 0, 0],
            ])
        );
    }

    /// A PCR_Read response for `pcr` with `digest`.
    fn pcr_read_response(bitmap: [u8; 3], digest: &[u8]) -> Vec<u8> {
        let mut c = Command::new(TPM_ST_NO_SESSIONS, 0);
        c.u32(7).u32(1).u16(TPM_ALG_SHA256).u8(3);
        c.0.extend_from_slice(&bitmap);
        c.u32(1).sized(digest);
        c.finish()
    }

    #[test]
    fn pcr_read_responses_are_checked() {
        let digest = [0x5a; 32];
        assert_eq!(
            parse_pcr_read(&pcr_read_response([0, 0, 1], &digest), 16),
            Ok(digest)
        );
        // Another PCR than asked, a short digest, a response cut short, an error code.
        assert!(parse_pcr_read(&pcr_read_response([0, 0, 2], &digest), 16).is_err());
        assert!(parse_pcr_read(&pcr_read_response([0, 0, 1], &digest[..20]), 16).is_err());
        let mut cut = pcr_read_response([0, 0, 1], &digest);
        cut.truncate(cut.len() - 1);
        assert!(parse_pcr_read(&cut, 16).is_err());
        let error = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x01];
        assert_eq!(parse_pcr_read(&error, 16), Err(Error::Code(0x101)));
    }

    #[test]
    fn session_responses_keep_to_their_parameter_size() {
        // parameterSize 2 covering a TPM2B of size 0, then the session area.
        let ok = [
            0x80, 0x02, 0, 0, 0, 21, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1, 0, 0,
        ];
        let mut r = parameters(&ok).unwrap();
        assert_eq!(r.sized("data"), Ok(&[][..]));
        assert!(r.u8("more").is_err());
        // A parameterSize past the end.
        let bad = [0x80, 0x02, 0, 0, 0, 14, 0, 0, 0, 0, 0, 0, 0x10, 0];
        assert!(parameters(&bad).is_err());
        // An unknown tag.
        assert!(parameters(&[0x80, 0x03, 0, 0, 0, 10, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn ranges_are_refused_before_any_io() {
        assert!(check_pcr(24).is_err());
        assert!(check_pcr(23).is_ok());
        assert!(check_index(0x0100_0000).is_ok());
        assert!(check_index(0x0200_0000).is_err());
        assert!(check_index(0x40_0001).is_err());
    }

    #[test]
    fn hex_and_numbers() {
        assert_eq!(parse_hex::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(parse_hex::<2>("0aF"), None);
        assert_eq!(parse_hex::<2>("0aFg"), None);
        assert_eq!(parse_hex::<1>("é"), None);
        assert_eq!(parse_number("16"), Some(16));
        assert_eq!(parse_number("0x1500016"), Some(0x0150_0016));
        assert_eq!(parse_number("x"), None);
    }

    /// `swtpm chardev` on one end of a socket pair, with its state in `dir`; the other end is
    /// the transport. swtpm ends when the transport is dropped.
    fn swtpm(dir: &std::path::Path) -> Option<(Transport, std::process::Child)> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        if !std::path::Path::new("/usr/bin/swtpm").exists() {
            return None;
        }
        let (ours, theirs) = UnixStream::pair().unwrap();
        let fd = theirs.as_raw_fd();
        let mut c = std::process::Command::new("/usr/bin/swtpm");
        c.args(["chardev", "--tpm2", "--fd", &fd.to_string()])
            .arg(format!("--tpmstate=dir={}", dir.display()))
            .args(["--flags", "not-need-init,startup-clear"]);
        // SAFETY: between fork and exec only an async-signal-safe call on an fd this process
        // owns: swtpm must inherit it, so its close-on-exec flag is cleared.
        unsafe {
            c.pre_exec(move || crate::sys::keep_on_exec(fd));
        }
        let child = c.spawn().unwrap();
        drop(theirs);
        Some((Transport::Stream(ours), child))
    }

    /// Every command against a real TPM (swtpm), and the NV index again after a restart on
    /// the same state. Fails when swtpm is not installed (scripts/packages.txt installs it).
    #[test]
    fn against_swtpm() {
        let dir = std::env::temp_dir().join(format!("rvmspawn-guest-swtpm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let Some((mut t, mut child)) = swtpm(&dir) else {
            panic!("this test needs /usr/bin/swtpm: install the Debian package swtpm");
        };
        let a = get_random(&mut t, 40).unwrap();
        let b = get_random(&mut t, 40).unwrap();
        assert_eq!((a.len(), b.len()), (40, 40));
        assert_ne!(a, b);

        assert_eq!(pcr_read(&mut t, 16).unwrap(), [0; 32]);
        let digest = [0x42; 32];
        pcr_extend(&mut t, 16, &digest).unwrap();
        let mut h = Sha256::new();
        h.update(&[0; 32]);
        h.update(&digest);
        assert_eq!(hex(&pcr_read(&mut t, 16).unwrap()), hex(&h.finish()));

        let index = 0x0150_0016;
        assert_eq!(nv_size(&mut t, index), Ok(None));
        assert!(nv_read(&mut t, index).is_err());
        nv_write(&mut t, index, b"first value").unwrap();
        assert_eq!(nv_read(&mut t, index).unwrap(), b"first value");
        // Defined now: written again in place; a text of another size is refused.
        nv_write(&mut t, index, b"other value").unwrap();
        assert!(matches!(
            nv_write(&mut t, index, b"short"),
            Err(Error::Usage(_))
        ));
        drop(t);
        assert!(child.wait().unwrap().success());

        // The index is in swtpm's state directory: a new swtpm reads it back.
        let (mut t, mut child) = swtpm(&dir).unwrap();
        assert_eq!(nv_read(&mut t, index).unwrap(), b"other value");
        drop(t);
        assert!(child.wait().unwrap().success());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
