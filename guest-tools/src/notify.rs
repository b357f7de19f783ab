//! Where systemd in the guest finds its supervisor's notify socket: the `vmm.notify_socket`
//! credential in an SMBIOS type 11 string, and how to read it.

use crate::sys::SockType;

/// The credential systemd-vmspawn passes.
pub const CREDENTIAL: &str = "vmm.notify_socket";

/// The strings of one SMBIOS structure as the kernel shows it in
/// `/sys/firmware/dmi/entries/T-N/raw`: the formatted area is `raw[1]` bytes long (type, length,
/// handle, and for type 11 the string count), then NUL-terminated strings up to an empty one.
pub fn structure_strings(raw: &[u8]) -> Vec<&[u8]> {
    let Some(&len) = raw.get(1) else {
        return Vec::new();
    };
    let mut rest = raw.get(usize::from(len)..).unwrap_or_default();
    let mut out = Vec::new();
    while let Some(end) = rest.iter().position(|&b| b == 0) {
        if end == 0 {
            break;
        }
        out.push(&rest[..end]);
        rest = &rest[end + 1..];
    }
    out
}

/// The value of credential `id` if `string` passes it, in either form systemd reads from
/// SMBIOS type 11: `io.systemd.credential.binary:ID=BASE64` (what vmspawn passes now) or
/// `io.systemd.credential:ID=VALUE` (vmspawn v256). `Err` for a binary form that is not
/// base64.
pub fn credential_value(string: &[u8], id: &str) -> Option<Result<Vec<u8>, String>> {
    let split = |prefix: &str| -> Option<&[u8]> {
        let rest = string.strip_prefix(prefix.as_bytes())?;
        let rest = rest.strip_prefix(id.as_bytes())?;
        rest.strip_prefix(b"=")
    };
    if let Some(b64) = split("io.systemd.credential.binary:") {
        return Some(base64_decode(b64).ok_or_else(|| "credential is not valid base64".into()));
    }
    split("io.systemd.credential:").map(|v| Ok(v.to_vec()))
}

/// Standard base64 (RFC 4648 alphabet); whitespace is skipped and padding may be left out, as
/// systemd's decoder allows.
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut padding = 0;
    for &c in text {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            b' ' | b'\t' | b'\n' | b'\r' => continue,
            _ => return None,
        };
        if padding > 0 {
            return None; // data after padding
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone 6-bit group cannot end a valid encoding; leftover bits must be zero.
    if bits >= 6 || acc != 0 || padding > 2 {
        return None;
    }
    Some(out)
}

/// A notify address systemd accepts for a vsock supervisor: `vsock:CID:PORT` (a stream
/// connection here), `vsock-stream:CID:PORT` (what vmspawn passes) or
/// `vsock-seqpacket:CID:PORT`.
pub fn parse_address(addr: &str) -> Result<(SockType, u32, u32), String> {
    let (kind, rest) = addr
        .split_once(':')
        .ok_or_else(|| format!("not a vsock address: {addr}"))?;
    let ty = match kind {
        "vsock" | "vsock-stream" => SockType::Stream,
        "vsock-seqpacket" => SockType::SeqPacket,
        "vsock-dgram" => return Err("vsock-dgram addresses are not supported".into()),
        _ => return Err(format!("not a vsock address: {addr}")),
    };
    let (cid, port) = rest
        .split_once(':')
        .ok_or_else(|| format!("no port in {addr}"))?;
    let number = |s: &str, what: &str| -> Result<u32, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad {what} in {addr}"));
        }
        s.parse()
            .map_err(|_| format!("{what} out of range in {addr}"))
    };
    Ok((ty, number(cid, "CID")?, number(port, "port")?))
}

/// Bytes as text for a status line: printable ASCII as is, anything else as `\xNN`.
pub fn printable(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// Search every SMBIOS type 11 structure under `dir` (normally `/sys/firmware/dmi/entries`) for
/// the credential, in the order of the structures' instance numbers; the first one wins.
pub fn find_credential(dir: &std::path::Path, id: &str) -> Result<Vec<u8>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut type11: Vec<(u32, std::path::PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("11-")?.parse().ok()?;
            Some((n, e.path().join("raw")))
        })
        .collect();
    type11.sort();
    for (_, path) in &type11 {
        let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if raw.first() != Some(&11) {
            continue;
        }
        for s in structure_strings(&raw) {
            if let Some(value) = credential_value(s, id) {
                return value;
            }
        }
    }
    Err(format!(
        "no {id} credential in SMBIOS type 11 ({} structures)",
        type11.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_of_a_type11_structure() {
        // type 11, length 5, handle 0x1234, count 2, then the strings and the end marker.
        let raw = b"\x0b\x05\x34\x12\x02first\0second=x\0\0";
        assert_eq!(
            structure_strings(raw),
            vec![&b"first"[..], &b"second=x"[..]]
        );
        assert!(structure_strings(b"\x0b\x05\x34\x12\x00\0\0").is_empty());
        // Truncated or odd input never panics.
        assert!(structure_strings(b"").is_empty());
        assert!(structure_strings(b"\x0b\x40").is_empty());
        assert_eq!(structure_strings(b"\x0b\x02abc\0"), vec![&b"abc"[..]]);
        assert!(structure_strings(b"\x0b\x02abc").is_empty());
    }

    #[test]
    fn both_credential_forms() {
        let bin = b"io.systemd.credential.binary:vmm.notify_socket=dnNvY2stc3RyZWFtOjI6MTIzNDU=";
        assert_eq!(
            credential_value(bin, CREDENTIAL),
            Some(Ok(b"vsock-stream:2:12345".to_vec()))
        );
        let text = b"io.systemd.credential:vmm.notify_socket=vsock-stream:2:99";
        assert_eq!(
            credential_value(text, CREDENTIAL),
            Some(Ok(b"vsock-stream:2:99".to_vec()))
        );
        // Other credentials, a longer name with the same prefix, other strings.
        assert_eq!(
            credential_value(b"io.systemd.credential:other=1", CREDENTIAL),
            None
        );
        assert_eq!(
            credential_value(b"io.systemd.credential:vmm.notify_socket2=1", CREDENTIAL),
            None
        );
        assert_eq!(
            credential_value(b"vmm.notify_socket=vsock:2:1", CREDENTIAL),
            None
        );
        assert!(matches!(
            credential_value(
                b"io.systemd.credential.binary:vmm.notify_socket=!!",
                CREDENTIAL
            ),
            Some(Err(_))
        ));
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode(b""), Some(vec![]));
        assert_eq!(base64_decode(b"YQ=="), Some(b"a".to_vec()));
        assert_eq!(base64_decode(b"YQ"), Some(b"a".to_vec()));
        assert_eq!(base64_decode(b"YWI="), Some(b"ab".to_vec()));
        assert_eq!(base64_decode(b"YWJj"), Some(b"abc".to_vec()));
        assert_eq!(base64_decode(b"YW Jj\n"), Some(b"abc".to_vec()));
        assert_eq!(base64_decode(b"/+8A"), Some(vec![0xff, 0xef, 0x00]));
        assert_eq!(base64_decode(b"Y"), None);
        assert_eq!(base64_decode(b"YR=="), None); // nonzero leftover bits
        assert_eq!(base64_decode(b"YQ==YQ=="), None);
        assert_eq!(base64_decode(b"YQ-_"), None);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("vsock-stream:2:12345"),
            Ok((SockType::Stream, 2, 12345))
        );
        assert_eq!(parse_address("vsock:2:1"), Ok((SockType::Stream, 2, 1)));
        assert_eq!(
            parse_address("vsock-seqpacket:3:4294967295"),
            Ok((SockType::SeqPacket, 3, u32::MAX))
        );
        for bad in [
            "vsock-dgram:2:1",
            "unix:/run/x",
            "/run/systemd/notify",
            "vsock:2",
            "vsock::5",
            "vsock:2:",
            "vsock:2:+5",
            "vsock:2:4294967296",
            "vsock:x:5",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_the_credential_in_sysfs_entries() {
        let dir = std::env::temp_dir().join(format!("rvmspawn-guest-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let put = |name: &str, raw: &[u8]| {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("raw"), raw).unwrap();
        };
        put("1-0", b"\x01\x1b\x00\x01\0\0");
        put("11-0", b"\x0b\x05\x00\x02\x01io.systemd.credential:x=1\0\0");
        assert!(
            find_credential(&dir, CREDENTIAL)
                .unwrap_err()
                .contains("1 structures")
        );
        put(
            "11-2",
            b"\x0b\x05\x00\x03\x01io.systemd.credential:vmm.notify_socket=vsock:2:7\0\0",
        );
        put(
            "11-10",
            b"\x0b\x05\x00\x04\x01io.systemd.credential:vmm.notify_socket=vsock:2:8\0\0",
        );
        // By instance number, not name: 11-2 comes before 11-10.
        assert_eq!(find_credential(&dir, CREDENTIAL), Ok(b"vsock:2:7".to_vec()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn printable_escapes() {
        assert_eq!(printable(b"vsock:2:1"), "vsock:2:1");
        assert_eq!(printable(b"a\nb\\\xff"), "a\\x0ab\\x5c\\xff");
    }
}
