//! TPM2 command encodings the VMM needs, and the header every command and response starts
//! with (TPM 2.0 Library, Part 1: big-endian `tag: u16, size: u32, code: u32`).

/// `TPM_ST_NO_SESSIONS`: a command or response without authorization sessions.
pub const TPM_ST_NO_SESSIONS: u16 = 0x8001;
/// `TPM_ST_SESSIONS`: a command or response with authorization sessions.
pub const TPM_ST_SESSIONS: u16 = 0x8002;
/// The command succeeded.
pub const TPM_RC_SUCCESS: u32 = 0;
/// The TPM has not been started (`TPM2_Startup` is still due), or was already started.
pub const TPM_RC_INITIALIZE: u32 = 0x100;
/// The TPM failed: what the device answers when the back end did not.
pub const TPM_RC_FAILURE: u32 = 0x101;
/// The command's size is wrong (larger than the buffer, or smaller than its header).
pub const TPM_RC_COMMAND_SIZE: u32 = 0x142;
/// The command's tag is neither of TPM 2.0's.
pub const TPM_RC_BAD_TAG: u32 = 0x01e;
/// The command was cancelled before it ran.
pub const TPM_RC_CANCELED: u32 = 0x909;
/// Length of the header of every command and response.
pub const HEADER_LEN: usize = 10;

/// `TPM2_SelfTest` is running its tests in the background: they will finish by themselves.
pub const TPM_RC_TESTING: u32 = 0x90a;

const TPM_CC_SELF_TEST: u32 = 0x143;
const TPM_CC_STARTUP: u32 = 0x144;
const TPM_CC_PCR_EXTEND: u32 = 0x182;
const TPM_SU_CLEAR: u16 = 0;
/// The password authorization session handle.
const TPM_RS_PW: u32 = 0x4000_0009;
const TPM_ALG_SHA256: u16 = 0x000b;

/// A command with `tag` and `code` whose parameters are `body`, with its size filled in.
pub(crate) fn build(tag: u16, code: u32, body: &[u8]) -> Vec<u8> {
    let size = u32::try_from(HEADER_LEN + body.len()).unwrap_or(u32::MAX);
    let mut c = Vec::with_capacity(HEADER_LEN + body.len());
    c.extend_from_slice(&tag.to_be_bytes());
    c.extend_from_slice(&size.to_be_bytes());
    c.extend_from_slice(&code.to_be_bytes());
    c.extend_from_slice(body);
    c
}

/// `TPM2_Startup(TPM_SU_CLEAR)`.
pub fn startup_clear() -> Vec<u8> {
    build(
        TPM_ST_NO_SESSIONS,
        TPM_CC_STARTUP,
        &TPM_SU_CLEAR.to_be_bytes(),
    )
}

/// `TPM2_SelfTest(fullTest = YES)`: test every algorithm now, as firmware does after
/// `TPM2_Startup`, so that no later command waits for a test.
pub fn self_test_full() -> Vec<u8> {
    build(TPM_ST_NO_SESSIONS, TPM_CC_SELF_TEST, &[1])
}

/// `TPM2_PCR_Extend` of PCR `pcr`'s SHA-256 bank with `digest`, authorized by a password
/// session (`TPM_RS_PW`) with an empty password, as the PCRs' default authorization is.
pub fn pcr_extend_sha256(pcr: u32, digest: &[u8; 32]) -> Vec<u8> {
    let mut body = Vec::with_capacity(55);
    body.extend_from_slice(&pcr.to_be_bytes());
    // The authorization area: its size, then one TPMS_AUTH_COMMAND (handle, an empty nonce,
    // no attributes, an empty password).
    body.extend_from_slice(&9u32.to_be_bytes());
    body.extend_from_slice(&TPM_RS_PW.to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    body.push(0);
    body.extend_from_slice(&0u16.to_be_bytes());
    // TPML_DIGEST_VALUES with one SHA-256 digest.
    body.extend_from_slice(&1u32.to_be_bytes());
    body.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    body.extend_from_slice(digest);
    build(TPM_ST_SESSIONS, TPM_CC_PCR_EXTEND, &body)
}

/// The response code of a response (None if shorter than its 10-byte header).
pub fn response_code(response: &[u8]) -> Option<u32> {
    be32(response, 6)
}

/// The size a command or response says it has (None if shorter than the size field).
pub(crate) fn header_size(bytes: &[u8]) -> Option<u32> {
    be32(bytes, 2)
}

/// The tag of a command or response.
pub(crate) fn header_tag(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(0..2)?.try_into().ok()?))
}

/// A response that carries only `code` (a 10-byte header).
pub(crate) fn error_response(code: u32) -> Vec<u8> {
    build(TPM_ST_NO_SESSIONS, code, &[])
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(
            startup_clear(),
            [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x44, 0, 0]
        );
        assert_eq!(
            self_test_full(),
            [0x80, 0x01, 0, 0, 0, 0x0b, 0, 0, 0x01, 0x43, 1]
        );
        let e = pcr_extend_sha256(11, &[0xab; 32]);
        assert_eq!(e.len(), 65);
        assert_eq!(header_size(&e), Some(65));
        assert_eq!(&e[..2], &[0x80, 0x02]);
        assert_eq!(&e[6..14], &[0, 0, 0x01, 0x82, 0, 0, 0, 11]);
        assert_eq!(&e[14..18], &[0, 0, 0, 9]);
        assert_eq!(&e[18..22], &[0x40, 0, 0, 9]);
        assert_eq!(&e[27..33], &[0, 0, 0, 1, 0, 0x0b]);
        assert_eq!(&e[33..], &[0xab; 32]);
        assert_eq!(response_code(&error_response(0x101)), Some(0x101));
        assert_eq!(error_response(0x101).len(), 10);
        assert_eq!(response_code(&[0x80, 1, 0, 0, 0, 10, 0, 0, 1]), None);
    }
}
