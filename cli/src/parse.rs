//! Value parsers with systemd's syntax, so that command lines written for
//! systemd-vmspawn mean the same thing here.
//!
//! Each parser returns an [`Invalid`] carrying the errno systemd's parser would return;
//! the caller adds the option name and the value to the message.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use firmware::nvram::NvramState;

/// Why a value was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Becomes the exit code, as in systemd's `return log_error_errno(r, …)`.
    pub errno: i32,
    pub reason: String,
}

impl Invalid {
    /// Malformed input.
    pub fn syntax(reason: impl Into<String>) -> Invalid {
        Invalid {
            errno: libc::EINVAL,
            reason: reason.into(),
        }
    }

    /// Well-formed, but outside what can be used.
    pub fn range(reason: impl Into<String>) -> Invalid {
        Invalid {
            errno: libc::ERANGE,
            reason: reason.into(),
        }
    }
}

/// systemd's `parse_boolean()`.
pub fn parse_boolean(s: &str) -> Result<bool, Invalid> {
    const TRUE: [&str; 6] = ["1", "yes", "y", "true", "t", "on"];
    const FALSE: [&str; 6] = ["0", "no", "n", "false", "f", "off"];
    if TRUE.iter().any(|t| s.eq_ignore_ascii_case(t)) {
        Ok(true)
    } else if FALSE.iter().any(|f| s.eq_ignore_ascii_case(f)) {
        Ok(false)
    } else {
        Err(Invalid::syntax("expected a boolean (yes/no) or auto"))
    }
}

/// A boolean where `None` means "detect". v256 only knew the empty string for that;
/// newer vmspawn also spells it `auto`, and accepting both costs nothing.
pub fn parse_tristate(s: &str) -> Result<Option<bool>, Invalid> {
    if s.is_empty() || s == "auto" {
        Ok(None)
    } else {
        parse_boolean(s).map(Some)
    }
}

/// vmspawn's `--console=` names.
pub fn parse_console_mode(s: &str) -> Result<vmm::ConsoleMode, Invalid> {
    Ok(match s {
        "interactive" => vmm::ConsoleMode::Interactive,
        "read-only" => vmm::ConsoleMode::ReadOnly,
        "native" => vmm::ConsoleMode::Native,
        "headless" => vmm::ConsoleMode::Headless,
        "gui" => vmm::ConsoleMode::Gui,
        _ => {
            return Err(Invalid::syntax(
                "expected interactive, read-only, native, gui or headless",
            ));
        }
    })
}

/// vmspawn's `--console-transport=` names.
pub fn parse_console_transport(s: &str) -> Result<vmm::ConsoleTransport, Invalid> {
    match s {
        "virtio" => Ok(vmm::ConsoleTransport::Virtio),
        "serial" => Ok(vmm::ConsoleTransport::Serial),
        _ => Err(Invalid::syntax("expected virtio or serial")),
    }
}

/// systemd's `parse_size(s, 1024, …)`.
///
/// Faithful down to the odd corners, because scripts written for vmspawn rely on them:
/// suffixes are upper case only, a fraction applies to its own suffix (`1.5G`), several
/// terms in decreasing units add up (`1G 512M`), and whitespace may precede each number
/// and suffix but not end the string.
pub fn parse_size(s: &str) -> Result<u64, Invalid> {
    const UNITS: [(&str, u64); 8] = [
        ("E", 1 << 60),
        ("P", 1 << 50),
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
        ("B", 1),
        ("", 1),
    ];
    let too_big = || Invalid::range("the size does not fit in 64 bits");
    let not_a_size = || Invalid::syntax("expected a size like 512M or 2G");

    let mut rest = s;
    let mut total: u64 = 0;
    // Units must decrease from one term to the next, so each term searches from here on.
    let mut first_unit = 0;
    loop {
        rest = rest.trim_start_matches(is_whitespace);
        // strtoull() takes a sign; systemd then rejects a minus as out of range.
        let (negative, unsigned) = match rest.as_bytes().first() {
            Some(b'-') => (true, &rest[1..]),
            Some(b'+') => (false, &rest[1..]),
            _ => (false, rest),
        };
        let digits = leading_digits(unsigned);
        if digits.is_empty() {
            return Err(not_a_size());
        }
        let whole: u64 = digits.parse().map_err(|_| too_big())?;
        if negative {
            return Err(Invalid::range("a size cannot be negative"));
        }
        rest = &unsigned[digits.len()..];

        let mut fraction = 0.0_f64;
        if let Some(after_dot) = rest.strip_prefix('.') {
            let decimals = leading_digits(after_dot);
            if !decimals.is_empty() {
                // strtoull() must not overflow on the decimals either. Dividing once per
                // digit rounds exactly as systemd does.
                let numerator: u64 = decimals.parse().map_err(|_| too_big())?;
                fraction = (0..decimals.len()).fold(numerator as f64, |f, _| f / 10.0);
            }
            // "10.M" is accepted: a dot with no decimals after it is not an error.
            rest = &after_dot[decimals.len()..];
        }

        rest = rest.trim_start_matches(is_whitespace);
        let Some(offset) = UNITS[first_unit..]
            .iter()
            .position(|(suffix, _)| rest.starts_with(suffix))
        else {
            return Err(not_a_size());
        };
        let unit = first_unit + offset;
        let (suffix, factor) = UNITS[unit];

        let round_up = u64::from(fraction > 0.0);
        if whole
            .checked_add(round_up)
            .is_none_or(|w| w > u64::MAX / factor)
        {
            return Err(too_big());
        }
        // Truncating the fractional bytes is what systemd does.
        let term = whole * factor + (fraction * factor as f64) as u64;
        total = total.checked_add(term).ok_or_else(too_big)?;

        rest = &rest[suffix.len()..];
        first_unit = unit + 1;
        if rest.is_empty() {
            return Ok(total);
        }
    }
}

fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn leading_digits(s: &str) -> &str {
    let end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    &s[..end]
}

/// Highest vCPU count accepted: the machine's own limit (8-bit APIC IDs in the MADT, 0xFF
/// being the broadcast ID).
pub const MAX_VCPUS: u32 = vmm::MAX_VCPUS;

/// `--qemu-smp`: vmspawn hands the string to QEMU's `-smp`, whose topology syntax has no
/// meaning without QEMU. A plain count is the part that carries over.
pub fn parse_smp(s: &str) -> Result<u32, Invalid> {
    let expected = || format!("expected a number of CPUs from 1 to {MAX_VCPUS}");
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid::syntax(expected()));
    }
    match s.parse::<u32>() {
        Ok(n @ 1..=MAX_VCPUS) => Ok(n),
        _ => Err(Invalid::range(expected())),
    }
}

/// systemd's `safe_atou32()`: leading whitespace and a sign are tolerated, `0x`, `0o`,
/// `0b` and a C octal leading zero select the base.
pub fn safe_atou32(s: &str) -> Result<u32, Invalid> {
    let not_a_number = || Invalid::syntax("expected an unsigned number");
    let s = s.trim_start_matches(is_whitespace);
    let (negative, unsigned) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = unsigned.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(not_a_number());
    }
    let value = u64::from_str_radix(digits, radix)
        .ok()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| Invalid::range("the number does not fit in 32 bits"))?;
    if negative && value != 0 {
        return Err(Invalid::range("the number cannot be negative"));
    }
    Ok(value)
}

/// CIDs 0 to 2 belong to the hypervisor, the local loopback and the host, and
/// `u32::MAX` is `VMADDR_CID_ANY`.
pub const VSOCK_CIDS: std::ops::RangeInclusive<u32> = 3..=u32::MAX - 1;

/// `--vsock-cid`: `None` (from an empty value) means "pick one".
pub fn parse_vsock_cid(s: &str) -> Result<Option<u32>, Invalid> {
    if s.is_empty() {
        return Ok(None);
    }
    // The names systemd's vsock_parse_cid() knows, which all denote reserved CIDs.
    let cid = match s {
        "hypervisor" => 0,
        "local" => 1,
        "host" => 2,
        _ => safe_atou32(s)?,
    };
    if !VSOCK_CIDS.contains(&cid) {
        return Err(Invalid::range(format!(
            "CID {cid} is reserved, a guest CID must be from {} to {}",
            VSOCK_CIDS.start(),
            VSOCK_CIDS.end()
        )));
    }
    Ok(Some(cid))
}

/// Linux's `HOST_NAME_MAX`.
const HOST_NAME_MAX: usize = 64;

/// systemd's `hostname_is_valid(s, 0)`: dot-separated labels of letters, digits, `-` and
/// `_`, no label empty or starting or ending with `-`, at most 64 characters overall.
pub fn hostname_is_valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= HOST_NAME_MAX
        && s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(is_ldh)
        })
}

fn is_ldh(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Turns an arbitrary file name into a host name by dropping what hostname_is_valid()
/// refuses, the way systemd's `hostname_cleanup()` derives default machine names. May
/// return an empty string.
pub fn hostname_cleanup(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        let at_label_start = out.is_empty() || out.ends_with('.');
        match b {
            b'.' if at_label_start || out.ends_with('-') => {}
            b'-' if at_label_start => {}
            b'.' | b'-' => out.push(char::from(b)),
            b if is_ldh(b) => out.push(char::from(b)),
            _ => {}
        }
        if out.len() == HOST_NAME_MAX {
            break;
        }
    }
    while out.ends_with(['-', '.']) {
        out.pop();
    }
    out
}

/// `-M`/`--machine`: `None` (from an empty value) means "derive the name".
pub fn parse_machine_name(s: &str) -> Result<Option<String>, Invalid> {
    if s.is_empty() {
        Ok(None)
    } else if hostname_is_valid(s) {
        Ok(Some(s.to_owned()))
    } else {
        Err(Invalid::syntax(
            "a machine name must be a valid host name: at most 64 letters, digits, \
             '-' and '_' in dot-separated labels",
        ))
    }
}

/// A block of host UIDs (and the same GIDs) that guest IDs 0 and up map onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    dead_code,
    reason = "consumed once --directory (virtiofsd) is implemented"
)]
pub struct UidRange {
    pub shift: u32,
    pub count: u32,
}

/// `--private-users=UID_SHIFT[:UID_RANGE]`, as systemd's `parse_userns_uid_range()`.
pub fn parse_private_users(s: &str) -> Result<UidRange, Invalid> {
    let (shift, count) = match s.split_once(':') {
        Some((shift, count)) => {
            let count = safe_atou32(count).map_err(|e| Invalid {
                reason: format!("bad UID range '{count}': {}", e.reason),
                ..e
            })?;
            (shift, count)
        }
        None => (s, 65536),
    };
    let shift = parse_uid(shift)?;
    if count == 0 || shift.checked_add(count).is_none() {
        return Err(Invalid::range(
            "the UID range must not be empty nor reach past 4294967294",
        ));
    }
    Ok(UidRange { shift, count })
}

/// systemd's `parse_uid()`: stricter than other numbers (no sign, whitespace or leading
/// zero), and the IDs libc uses as "invalid" markers are refused.
fn parse_uid(s: &str) -> Result<u32, Invalid> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.starts_with('0') && s != "0") {
        return Err(Invalid::syntax(format!(
            "bad UID '{s}': expected a decimal number"
        )));
    }
    let uid: u32 = s
        .parse()
        .map_err(|_| Invalid::range(format!("bad UID '{s}': too large")))?;
    if uid == u32::MAX || uid == u32::from(u16::MAX) {
        return Err(Invalid::syntax(format!("UID {uid} is reserved")));
    }
    Ok(uid)
}

/// Splits off the first `:`-separated field like systemd's `extract_first_word(…, ":",
/// EXTRACT_DONT_COALESCE_SEPARATORS)`: a backslash takes the next byte literally. The
/// rest is `None` when there was no separator.
pub fn split_first_field(s: &[u8]) -> Result<(Vec<u8>, Option<&[u8]>), Invalid> {
    let mut field = Vec::new();
    let mut bytes = s.iter().enumerate();
    while let Some((i, &b)) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some((_, &escaped)) => field.push(escaped),
                None => return Err(trailing_backslash()),
            },
            b':' => return Ok((field, Some(&s[i + 1..]))),
            _ => field.push(b),
        }
    }
    Ok((field, None))
}

/// Removes backslash escapes (`\x` becomes `x`) without splitting anywhere.
fn unescape_backslashes(s: &[u8]) -> Result<Vec<u8>, Invalid> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.iter();
    while let Some(&b) = bytes.next() {
        if b == b'\\' {
            out.push(*bytes.next().ok_or_else(trailing_backslash)?);
        } else {
            out.push(b);
        }
    }
    Ok(out)
}

fn trailing_backslash() -> Invalid {
    Invalid::syntax("a trailing backslash escapes nothing")
}

/// A host directory shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(dead_code, reason = "consumed once --bind (virtiofsd) is implemented")]
pub struct BindMount {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute guest path.
    pub target: PathBuf,
    pub read_only: bool,
}

/// `--bind=SOURCE[:TARGET]`. The target defaults to the source as written, so a relative
/// source needs an explicit target, as in vmspawn. The man page promises `\:` in either
/// path, so unlike vmspawn v256 (which takes the target verbatim) the target is unescaped
/// too; a further unescaped colon stays part of the target.
pub fn parse_bind(s: &OsStr, read_only: bool, cwd: &Path) -> Result<BindMount, Invalid> {
    let (source, rest) = split_first_field(s.as_bytes())?;
    if source.is_empty() {
        return Err(Invalid::syntax("the source path is empty"));
    }
    let explicit_target = rest.is_some();
    let target = match rest {
        Some(rest) => unescape_backslashes(rest)?,
        None => source.clone(),
    };
    let source = PathBuf::from(OsString::from_vec(source));
    let target = PathBuf::from(OsString::from_vec(target));
    if !explicit_target && !target.is_absolute() {
        return Err(Invalid::syntax(
            "a relative source path needs an absolute target path: SOURCE:TARGET",
        ));
    }
    if !target.is_absolute() {
        return Err(Invalid::syntax(format!(
            "the path in the guest '{}' is not absolute",
            target.display()
        )));
    }
    Ok(BindMount {
        source: absolute(&source, cwd),
        target: simplify(&target),
        read_only,
    })
}

/// A path made absolute against `cwd` and cleaned of `.` components and repeated
/// slashes, like systemd's `path_make_absolute_cwd()` + `path_simplify()`. `..` stays:
/// resolving it lexically could change which file is meant when symlinks are involved.
pub fn absolute(path: &Path, cwd: &Path) -> PathBuf {
    simplify(&cwd.join(path))
}

fn simplify(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// Where a credential's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialData {
    /// `--set-credential`: the bytes themselves.
    Value(Vec<u8>),
    /// `--load-credential` with a path.
    File(PathBuf),
    /// `--load-credential` with a bare name: one of the credentials rvmspawn itself got
    /// (in `$CREDENTIALS_DIRECTORY`), passed on.
    Inherited(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: String,
    pub data: CredentialData,
}

/// Linux's `NAME_MAX`.
const NAME_MAX: usize = 255;

/// systemd's `credential_name_valid()`: usable both as a file name and as an fd name,
/// i.e. 1 to 255 printable ASCII characters other than `/` and `:`, and not `.` or `..`.
pub fn credential_name_is_valid(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != b"."
        && name != b".."
        && name
            .iter()
            .all(|&b| (b' '..=b'~').contains(&b) && b != b'/' && b != b':')
}

/// Splits `ID:REST` and checks the ID; the rest is returned raw.
fn credential_id(s: &[u8]) -> Result<(String, &[u8]), Invalid> {
    let (id, rest) = split_first_field(s)?;
    let Some(rest) = rest else {
        return Err(Invalid::syntax("expected ID:DATA, the colon is missing"));
    };
    if !credential_name_is_valid(&id) {
        return Err(Invalid::syntax(format!(
            "'{}' is not a valid credential name",
            String::from_utf8_lossy(&id)
        )));
    }
    // Valid names are printable ASCII.
    let id = String::from_utf8(id).expect("credential names are ASCII");
    Ok((id, rest))
}

/// `--set-credential=ID:VALUE`, the value with C escapes decoded.
pub fn parse_set_credential(s: &OsStr) -> Result<Credential, Invalid> {
    let (id, value) = credential_id(s.as_bytes())?;
    Ok(Credential {
        id,
        data: CredentialData::Value(cunescape(value)?),
    })
}

/// Linux's `PATH_MAX`, which counts the terminating NUL.
const PATH_MAX: usize = 4096;

/// `--load-credential=ID:PATH`. As in systemd, a source containing `/` is a path and
/// anything else names one of our own credentials.
pub fn parse_load_credential(s: &OsStr) -> Result<Credential, Invalid> {
    let (id, source) = credential_id(s.as_bytes())?;
    let data = if source.contains(&b'/') {
        let components_fit = source.split(|&b| b == b'/').all(|c| c.len() <= NAME_MAX);
        if source.len() >= PATH_MAX || !components_fit {
            return Err(Invalid::syntax("the path is too long"));
        }
        CredentialData::File(PathBuf::from(OsStr::from_bytes(source)))
    } else if credential_name_is_valid(source) {
        let name = std::str::from_utf8(source).expect("credential names are ASCII");
        CredentialData::Inherited(name.to_owned())
    } else {
        return Err(Invalid::syntax(
            "the source is neither a path nor a valid credential name",
        ));
    };
    Ok(Credential { id, data })
}

/// Decodes C escapes as systemd's `cunescape(…, UNESCAPE_ACCEPT_NUL)`: `\a \b \f \n \r
/// \t \v \\ \" \' \s`, `\xHH`, three-digit octal `\OOO`, and `\uHHHH`/`\UHHHHHHHH`
/// code points (written as UTF-8). Anything else after a backslash is an error.
pub fn cunescape(s: &[u8]) -> Result<Vec<u8>, Invalid> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let esc = &s[i + 1..];
        let bad = || {
            Invalid::syntax(format!(
                "invalid escape sequence '\\{}'",
                String::from_utf8_lossy(&esc[..esc.len().min(9)])
            ))
        };
        let Some(&kind) = esc.first() else {
            return Err(trailing_backslash());
        };
        let simple = match kind {
            b'a' => Some(0x07),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0x0b),
            b'\\' | b'"' | b'\'' => Some(kind),
            b's' => Some(b' '),
            _ => None,
        };
        let used = if let Some(byte) = simple {
            out.push(byte);
            1
        } else {
            match kind {
                b'x' => {
                    let v = digits_value(esc.get(1..3), 16).ok_or_else(bad)?;
                    out.push(v as u8);
                    3
                }
                b'0'..=b'7' => {
                    let v = digits_value(esc.get(..3), 8).ok_or_else(bad)?;
                    out.push(u8::try_from(v).map_err(|_| bad())?);
                    3
                }
                b'u' => {
                    let v = digits_value(esc.get(1..5), 16).ok_or_else(bad)?;
                    push_utf8(&mut out, v);
                    5
                }
                b'U' => {
                    let v = digits_value(esc.get(1..9), 16).ok_or_else(bad)?;
                    if !unichar_is_valid(v) {
                        return Err(bad());
                    }
                    push_utf8(&mut out, v);
                    9
                }
                _ => return Err(bad()),
            }
        };
        i += 1 + used;
    }
    Ok(out)
}

/// The value of exactly the given digits, `None` if missing or not digits of `radix`.
fn digits_value(digits: Option<&[u8]>, radix: u32) -> Option<u32> {
    digits?.iter().try_fold(0u32, |acc, &d| {
        char::from(d).to_digit(radix).map(|v| acc * radix + v)
    })
}

/// systemd's `unichar_is_valid()`: excludes surrogates, the non-characters
/// U+FDD0..U+FDEF and U+xxFFFE/U+xxFFFF, and anything past U+10FFFF.
fn unichar_is_valid(c: u32) -> bool {
    c < 0x11_0000
        && (c & 0xFFFF_F800) != 0xD800
        && !(0xFDD0..=0xFDEF).contains(&c)
        && (c & 0xFFFE) != 0xFFFE
}

/// UTF-8 encoding by hand, because systemd encodes `\u` surrogates too and `char` cannot
/// hold them.
fn push_utf8(out: &mut Vec<u8>, c: u32) {
    match c {
        0..=0x7F => out.push(c as u8),
        0x80..=0x7FF => out.extend([0xC0 | (c >> 6) as u8, 0x80 | (c & 0x3F) as u8]),
        0x800..=0xFFFF => out.extend([
            0xE0 | (c >> 12) as u8,
            0x80 | ((c >> 6) & 0x3F) as u8,
            0x80 | (c & 0x3F) as u8,
        ]),
        _ => out.extend([
            0xF0 | (c >> 18) as u8,
            0x80 | ((c >> 12) & 0x3F) as u8,
            0x80 | ((c >> 6) & 0x3F) as u8,
            0x80 | (c & 0x3F) as u8,
        ]),
    }
}

/// What `--firmware` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// The empty string or `auto`: UEFI for an image, none for a kernel (a direct boot).
    Auto,
    /// Boot through UEFI firmware chosen from the descriptors.
    Uefi,
    /// Boot through a BIOS (SeaBIOS); rvmspawn has none.
    Bios,
    /// No firmware: boot the kernel directly.
    None,
    /// Print the firmware descriptions found and exit.
    List,
    /// Print the description that would be chosen and exit.
    Describe,
    /// Boot with the firmware this JSON description names.
    Descriptor(PathBuf),
}

/// vmspawn's rule for a path that must not be mistaken for a keyword: absolute, or relative
/// starting with `./`.
fn is_explicit_path(s: &OsStr) -> bool {
    Path::new(s).is_absolute() || s.as_bytes().starts_with(b"./")
}

/// `--firmware`, as newer vmspawn takes it: a keyword, or a descriptor path that is absolute
/// or starts with `./`.
pub fn parse_firmware(s: &OsStr, cwd: &Path) -> Result<Firmware, Invalid> {
    let keyword = match s.as_bytes() {
        b"" | b"auto" => Some(Firmware::Auto),
        b"uefi" => Some(Firmware::Uefi),
        b"bios" => Some(Firmware::Bios),
        b"none" => Some(Firmware::None),
        b"list" => Some(Firmware::List),
        b"describe" => Some(Firmware::Describe),
        _ => None,
    };
    if let Some(keyword) = keyword {
        return Ok(keyword);
    }
    if !is_explicit_path(s) {
        return Err(Invalid::syntax(
            "expected one of 'auto', 'uefi', 'bios', 'none', 'list', 'describe', or an \
             absolute path or path starting with './'",
        ));
    }
    Ok(Firmware::Descriptor(absolute(Path::new(s), cwd)))
}

/// `--efi-nvram-template`: `None` (from an empty value) means the descriptor's template.
pub fn parse_efi_nvram_template(s: &OsStr, cwd: &Path) -> Result<Option<PathBuf>, Invalid> {
    if s.is_empty() {
        return Ok(None);
    }
    if !is_explicit_path(s) {
        return Err(Invalid::syntax(
            "expected an absolute path or a path starting with './'",
        ));
    }
    Ok(Some(absolute(Path::new(s), cwd)))
}

/// `--efi-nvram-state`, as vmspawn parses it: `auto` or a true boolean keeps the store
/// beside the image, the empty string or a false boolean is `off`, anything else must be a
/// path that is absolute or starts with `./`.
pub fn parse_efi_nvram_state(s: &OsStr, cwd: &Path) -> Result<NvramState, Invalid> {
    if s.is_empty() {
        return Ok(NvramState::Off);
    }
    if let Some(text) = s.to_str() {
        if text == "auto" {
            return Ok(NvramState::Auto);
        }
        if let Ok(keep) = parse_boolean(text) {
            return Ok(if keep {
                NvramState::Auto
            } else {
                NvramState::Off
            });
        }
    }
    if !is_explicit_path(s) {
        return Err(Invalid::syntax(
            "expected 'auto', 'off', or an absolute path or path starting with './'",
        ));
    }
    Ok(NvramState::Path(absolute(Path::new(s), cwd)))
}

/// `--tpm-state=`, spelled as `--efi-nvram-state=` (vmspawn parses both alike): `auto` or a
/// true boolean keeps it beside the image, empty or a false boolean is `off`, anything else
/// must be an absolute path or start with `./`.
pub fn parse_tpm_state(s: &OsStr, cwd: &Path) -> Result<vmm::TpmState, Invalid> {
    Ok(match parse_efi_nvram_state(s, cwd)? {
        NvramState::Auto => vmm::TpmState::Auto,
        NvramState::Off => vmm::TpmState::Off,
        NvramState::Path(path) => vmm::TpmState::Path(path),
    })
}

/// A path option (`--directory`, `--image`, `--linux`): `None` (from an empty value)
/// means "unset", as systemd's `parse_path_argument()` has it.
pub fn parse_path(s: &OsStr, cwd: &Path) -> Option<PathBuf> {
    (!s.is_empty()).then(|| absolute(Path::new(s), cwd))
}

/// `--extra-drive=[FORMAT:][DISKTYPE:]PATH`: the path of a raw image for virtio-blk. The
/// prefixes newer vmspawn knows are recognised: `raw:` and `virtio-blk:` are what rvmspawn
/// does anyway; other formats and disk types are refused (EOPNOTSUPP) rather than taken as
/// part of the path.
pub fn parse_extra_drive(s: &OsStr, cwd: &Path) -> Result<PathBuf, Invalid> {
    let unsupported = |what: &str| Invalid {
        errno: libc::EOPNOTSUPP,
        reason: format!("{what} is not supported (raw images on virtio-blk only)"),
    };
    let mut rest = s.as_encoded_bytes();
    if let Some(r) = rest.strip_prefix(b"raw:") {
        rest = r;
    } else if rest.starts_with(b"qcow2:") {
        return Err(unsupported("the qcow2 format"));
    }
    if let Some(r) = rest.strip_prefix(b"virtio-blk:") {
        rest = r;
    } else {
        for t in ["virtio-scsi:", "nvme:", "scsi-cd:"] {
            if rest.starts_with(t.as_bytes()) {
                return Err(unsupported(&format!("disk type {}", &t[..t.len() - 1])));
            }
        }
    }
    if rest.is_empty() {
        return Err(Invalid::syntax("expected a path"));
    }
    // SAFETY: `rest` is a suffix of `s`'s encoded bytes split after an ASCII prefix, so it is
    // itself valid encoded OsStr bytes.
    let path = unsafe { OsStr::from_encoded_bytes_unchecked(rest) };
    Ok(absolute(Path::new(path), cwd))
}

/// `--background=`: an ANSI SGR parameter string (digits and `;`, at most 64 bytes), or empty
/// for no tint.
pub fn parse_background(s: &str) -> Result<Option<String>, Invalid> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > 64 || !s.bytes().all(|b| b.is_ascii_digit() || b == b';') {
        return Err(Invalid::syntax(
            "expected an ANSI color sequence such as 48;2;12;51;19",
        ));
    }
    Ok(Some(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EINVAL: i32 = libc::EINVAL;
    const ERANGE: i32 = libc::ERANGE;

    #[test]
    fn extra_drives_take_known_prefixes_and_refuse_what_is_not_supported() {
        let cwd = Path::new("/w");
        let p = |s: &str| parse_extra_drive(OsStr::new(s), cwd);
        assert_eq!(p("d.raw").unwrap(), Path::new("/w/d.raw"));
        assert_eq!(p("raw:/d.raw").unwrap(), Path::new("/d.raw"));
        assert_eq!(p("raw:virtio-blk:d").unwrap(), Path::new("/w/d"));
        assert_eq!(p("virtio-blk:/x:y").unwrap(), Path::new("/x:y"));
        for bad in ["qcow2:/d", "nvme:/d", "raw:scsi-cd:/d", "virtio-scsi:d"] {
            assert_eq!(p(bad).unwrap_err().errno, libc::EOPNOTSUPP, "{bad}");
        }
        assert_eq!(p("raw:").unwrap_err().errno, EINVAL);
    }

    #[test]
    fn background_is_an_sgr_sequence_or_nothing() {
        assert_eq!(parse_background("").unwrap(), None);
        assert_eq!(
            parse_background("48;2;12;51;19").unwrap().as_deref(),
            Some("48;2;12;51;19")
        );
        for bad in ["green", "48;2\x1b", &"1".repeat(65)] {
            assert_eq!(parse_background(bad).unwrap_err().errno, EINVAL, "{bad}");
        }
    }

    fn errno<T: std::fmt::Debug>(r: Result<T, Invalid>) -> i32 {
        r.expect_err("should have been rejected").errno
    }

    #[test]
    fn booleans() {
        for t in ["1", "yes", "y", "true", "t", "on", "YES", "True", "ON", "Y"] {
            assert_eq!(parse_boolean(t), Ok(true), "{t}");
        }
        for f in ["0", "no", "n", "false", "f", "off", "NO", "False", "oFf"] {
            assert_eq!(parse_boolean(f), Ok(false), "{f}");
        }
        for bad in ["", "2", "yess", " yes", "yes ", "enable", "auto"] {
            assert_eq!(errno(parse_boolean(bad)), EINVAL, "{bad}");
        }
    }

    #[test]
    fn tristates() {
        assert_eq!(parse_tristate(""), Ok(None));
        assert_eq!(parse_tristate("auto"), Ok(None));
        assert_eq!(parse_tristate("yes"), Ok(Some(true)));
        assert_eq!(parse_tristate("off"), Ok(Some(false)));
        assert_eq!(errno(parse_tristate("maybe")), EINVAL);
        // systemd compares "auto" case-sensitively.
        assert_eq!(errno(parse_tristate("AUTO")), EINVAL);
    }

    #[test]
    fn sizes_plain_and_suffixed() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("1P"), Ok(1 << 50));
        assert_eq!(parse_size("1E"), Ok(1 << 60));
        assert_eq!(parse_size("+1G"), Ok(1 << 30));
    }

    #[test]
    fn sizes_fractions() {
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size("1.25M"), Ok(1_310_720));
        // Fractional bytes are truncated.
        assert_eq!(parse_size("1.5"), Ok(1));
        assert_eq!(parse_size("1.0009K"), Ok(1024));
        // A dot without decimals is tolerated.
        assert_eq!(parse_size("10.M"), Ok(10 << 20));
        assert_eq!(errno(parse_size(".5G")), EINVAL);
    }

    #[test]
    fn sizes_whitespace_and_compounds() {
        assert_eq!(parse_size(" 2G"), Ok(2 << 30));
        assert_eq!(parse_size("2 G"), Ok(2 << 30));
        assert_eq!(parse_size("1G 512M"), Ok((1 << 30) + (512 << 20)));
        assert_eq!(parse_size("1G512M"), Ok((1 << 30) + (512 << 20)));
        assert_eq!(errno(parse_size("512M 1G")), EINVAL);
        assert_eq!(errno(parse_size("1M 1M")), EINVAL);
        assert_eq!(errno(parse_size("1 2")), EINVAL);
        assert_eq!(errno(parse_size("2G ")), EINVAL);
    }

    #[test]
    fn sizes_rejected() {
        for bad in [
            "", "banana", "G", "1k", "1m", "1g", "1KB", "1Gi", "1GiB", "1 x", "0x10", "1,5G",
        ] {
            assert_eq!(errno(parse_size(bad)), EINVAL, "{bad}");
        }
        assert_eq!(errno(parse_size("-1")), ERANGE);
        assert_eq!(errno(parse_size("-0")), ERANGE);
        assert_eq!(errno(parse_size("- 1")), EINVAL);
    }

    #[test]
    fn sizes_overflow() {
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(errno(parse_size("18446744073709551616")), ERANGE);
        assert_eq!(parse_size("15E"), Ok(15 << 60));
        assert_eq!(errno(parse_size("16E")), ERANGE);
        assert_eq!(errno(parse_size("15.5E")), ERANGE);
        assert_eq!(errno(parse_size("17179869184G")), ERANGE);
        assert_eq!(parse_size("15E 1023P"), Ok(16383 << 50));
        assert_eq!(errno(parse_size("15E 1024P")), ERANGE);
        assert_eq!(errno(parse_size("1.123456789012345678901G")), ERANGE);
    }

    #[test]
    fn smp() {
        assert_eq!(parse_smp("1"), Ok(1));
        assert_eq!(parse_smp("4"), Ok(4));
        assert_eq!(parse_smp("254"), Ok(254));
        assert_eq!(parse_smp("007"), Ok(7));
        for bad in ["", "two", "4,sockets=2", "cpus=4", "+4", " 4", "-1", "1.5"] {
            assert_eq!(errno(parse_smp(bad)), EINVAL, "{bad}");
        }
        for out in ["0", "255", "99999999999999999999"] {
            assert_eq!(errno(parse_smp(out)), ERANGE, "{out}");
        }
    }

    #[test]
    fn unsigned_numbers_like_systemd() {
        assert_eq!(safe_atou32("42"), Ok(42));
        assert_eq!(safe_atou32(" 42"), Ok(42));
        assert_eq!(safe_atou32("+42"), Ok(42));
        assert_eq!(safe_atou32("0x2A"), Ok(42));
        assert_eq!(safe_atou32("0o52"), Ok(42));
        assert_eq!(safe_atou32("0b101010"), Ok(42));
        assert_eq!(safe_atou32("052"), Ok(42));
        assert_eq!(safe_atou32("0"), Ok(0));
        assert_eq!(safe_atou32("-0"), Ok(0));
        assert_eq!(safe_atou32("4294967295"), Ok(u32::MAX));
        for bad in ["", "x", "42 ", "0x", "08", "0b2", "4 2"] {
            assert_eq!(errno(safe_atou32(bad)), EINVAL, "{bad}");
        }
        assert_eq!(errno(safe_atou32("-1")), ERANGE);
        assert_eq!(errno(safe_atou32("4294967296")), ERANGE);
    }

    #[test]
    fn vsock_cids() {
        assert_eq!(parse_vsock_cid(""), Ok(None));
        assert_eq!(parse_vsock_cid("3"), Ok(Some(3)));
        assert_eq!(parse_vsock_cid("4294967294"), Ok(Some(4_294_967_294)));
        assert_eq!(parse_vsock_cid("0xFFFFFFFE"), Ok(Some(0xFFFF_FFFE)));
        for reserved in ["0", "1", "2", "4294967295", "host", "local", "hypervisor"] {
            assert_eq!(errno(parse_vsock_cid(reserved)), ERANGE, "{reserved}");
        }
        assert_eq!(errno(parse_vsock_cid("4294967296")), ERANGE);
        assert_eq!(errno(parse_vsock_cid("-3")), ERANGE);
        assert_eq!(errno(parse_vsock_cid("three")), EINVAL);
    }

    #[test]
    fn valid_hostnames() {
        for ok in [
            "a",
            "foo",
            "foo-bar",
            "foo--bar",
            "foo_bar",
            "_foo_",
            "foo.bar",
            "a.b.c",
            "1234",
            "FOO",
            "x".repeat(64).as_str(),
            "a-b.c-d",
        ] {
            assert!(hostname_is_valid(ok), "{ok}");
        }
    }

    #[test]
    fn invalid_hostnames() {
        for bad in [
            "",
            ".",
            ".foo",
            "foo.",
            "foo..bar",
            "-foo",
            "foo-",
            "foo-.bar",
            "foo.-bar",
            "foo bar",
            "foo/bar",
            "föö",
            "foo:bar",
            ".host",
            "x".repeat(65).as_str(),
        ] {
            assert!(!hostname_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn machine_names() {
        assert_eq!(parse_machine_name(""), Ok(None));
        assert_eq!(parse_machine_name("vm1"), Ok(Some("vm1".to_owned())));
        assert_eq!(errno(parse_machine_name("my vm")), EINVAL);
    }

    #[test]
    fn hostname_cleanups() {
        assert_eq!(hostname_cleanup("fedora"), "fedora");
        assert_eq!(hostname_cleanup("my image"), "myimage");
        assert_eq!(hostname_cleanup("-.-foo..bar-.baz-"), "foo.bar-baz");
        assert_eq!(hostname_cleanup("foo."), "foo");
        assert_eq!(hostname_cleanup("foo--"), "foo");
        assert_eq!(hostname_cleanup("äöü"), "");
        assert_eq!(hostname_cleanup(""), "");
        let long = hostname_cleanup(&"y".repeat(100));
        assert_eq!(long.len(), 64);
        assert!(hostname_is_valid(&long));
        for raw in ["a-.b", "x.-y", "--", "..", "a b.c_d", "1-2-3."] {
            let clean = hostname_cleanup(raw);
            assert!(
                clean.is_empty() || hostname_is_valid(&clean),
                "{raw} -> {clean}"
            );
        }
    }

    #[test]
    fn private_users() {
        let range = |shift, count| Ok(UidRange { shift, count });
        assert_eq!(parse_private_users("65536"), range(65536, 65536));
        assert_eq!(parse_private_users("0"), range(0, 65536));
        assert_eq!(parse_private_users("100000:1000"), range(100_000, 1000));
        assert_eq!(parse_private_users("100000:0x10000"), range(100_000, 65536));
        assert_eq!(
            parse_private_users("4294901759:65536"),
            range(4_294_901_759, 65536)
        );
        for bad in [
            "",
            "abc",
            "-1",
            "+5",
            "010",
            " 5",
            "5:",
            "5:x",
            ":5",
            "5:6:7",
            "65535",
            "4294967295",
        ] {
            assert_eq!(errno(parse_private_users(bad)), EINVAL, "{bad}");
        }
        assert_eq!(errno(parse_private_users("5:0")), ERANGE);
        assert_eq!(errno(parse_private_users("4294901760:65536")), ERANGE);
        assert_eq!(errno(parse_private_users("4294967296")), ERANGE);
    }

    #[test]
    fn first_field_splitting() {
        fn split(s: &str) -> Result<(Vec<u8>, Option<&[u8]>), Invalid> {
            split_first_field(s.as_bytes())
        }
        assert_eq!(split("a:b"), Ok((b"a".to_vec(), Some(&b"b"[..]))));
        assert_eq!(split("a"), Ok((b"a".to_vec(), None)));
        assert_eq!(split(":b"), Ok((Vec::new(), Some(&b"b"[..]))));
        assert_eq!(split("a:"), Ok((b"a".to_vec(), Some(&b""[..]))));
        assert_eq!(split(r"a\:b:c:d"), Ok((b"a:b".to_vec(), Some(&b"c:d"[..]))));
        assert_eq!(split(r"a\\:b"), Ok((br"a\".to_vec(), Some(&b"b"[..]))));
        assert_eq!(split(r"\a\b"), Ok((b"ab".to_vec(), None)));
        assert_eq!(errno(split(r"a\")), EINVAL);
    }

    fn bind(s: &str) -> Result<BindMount, Invalid> {
        parse_bind(OsStr::new(s), false, Path::new("/home/u"))
    }

    fn mount(source: &str, target: &str) -> Result<BindMount, Invalid> {
        Ok(BindMount {
            source: source.into(),
            target: target.into(),
            read_only: false,
        })
    }

    #[test]
    fn binds() {
        assert_eq!(bind("/srv"), mount("/srv", "/srv"));
        assert_eq!(bind("/srv:/mnt"), mount("/srv", "/mnt"));
        assert_eq!(bind("src:/mnt"), mount("/home/u/src", "/mnt"));
        assert_eq!(bind("./src/.:/mnt/"), mount("/home/u/src", "/mnt"));
        assert_eq!(bind("/a:/b:c"), mount("/a", "/b:c"));
        assert_eq!(
            parse_bind(OsStr::new("/srv"), true, Path::new("/")),
            Ok(BindMount {
                source: "/srv".into(),
                target: "/srv".into(),
                read_only: true
            })
        );
    }

    #[test]
    fn bind_escapes() {
        assert_eq!(bind(r"/a\:b"), mount("/a:b", "/a:b"));
        assert_eq!(bind(r"/a\:b:/c\:d"), mount("/a:b", "/c:d"));
        assert_eq!(bind(r"/a\\b:/c"), mount(r"/a\b", "/c"));
        assert_eq!(bind(r"/a\ b:/c"), mount("/a b", "/c"));
        assert_eq!(errno(bind(r"/a\")), EINVAL);
        assert_eq!(errno(bind(r"/a:/b\")), EINVAL);
    }

    #[test]
    fn bind_rejected() {
        for bad in ["", ":/mnt", "src", "/srv:", "/srv:mnt", "/srv:./mnt"] {
            assert_eq!(errno(bind(bad)), EINVAL, "{bad}");
        }
    }

    #[test]
    fn credential_names() {
        for ok in [
            "a",
            "foo.bar",
            "ssh.authorized_keys.root",
            "a b",
            "~",
            "...",
        ] {
            assert!(credential_name_is_valid(ok.as_bytes()), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a\nb", "\u{7f}", "ä"] {
            assert!(!credential_name_is_valid(bad.as_bytes()), "{bad}");
        }
        assert!(credential_name_is_valid("x".repeat(255).as_bytes()));
        assert!(!credential_name_is_valid("x".repeat(256).as_bytes()));
    }

    fn set(s: &str) -> Result<(String, Vec<u8>), Invalid> {
        let c = parse_set_credential(OsStr::new(s))?;
        match c.data {
            CredentialData::Value(v) => Ok((c.id, v)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn set_credentials() {
        let cred = |id: &str, v: &[u8]| Ok((id.to_owned(), v.to_vec()));
        assert_eq!(set("foo:bar"), cred("foo", b"bar"));
        assert_eq!(set("foo:"), cred("foo", b""));
        // Only the first colon separates.
        assert_eq!(set("foo:a:b"), cred("foo", b"a:b"));
        assert_eq!(set(r"foo:a\nb"), cred("foo", b"a\nb"));
        assert_eq!(set(r"foo:\x00\x41"), cred("foo", b"\0A"));
        for bad in [
            "foo", "", ":bar", "a/b:c", r"a\:b:c", "..:x", r"foo:\q", r"foo:\",
        ] {
            assert_eq!(errno(set(bad)), EINVAL, "{bad}");
        }
    }

    #[test]
    fn load_credentials() {
        let load = |s: &str| parse_load_credential(OsStr::new(s));
        let cred = |id: &str, data| {
            Ok(Credential {
                id: id.to_owned(),
                data,
            })
        };
        assert_eq!(
            load("key:/etc/key"),
            cred("key", CredentialData::File("/etc/key".into()))
        );
        assert_eq!(
            load("key:./key"),
            cred("key", CredentialData::File("./key".into()))
        );
        assert_eq!(
            load("key:other"),
            cred("key", CredentialData::Inherited("other".to_owned()))
        );
        for bad in ["key", "key:", "key:..", "/:x", "key:a\tb"] {
            assert_eq!(errno(load(bad)), EINVAL, "{bad}");
        }
        let long_component = format!("key:/{}", "x".repeat(256));
        assert_eq!(errno(load(&long_component)), EINVAL);
    }

    #[test]
    fn c_unescaping() {
        let un = |s: &str| cunescape(s.as_bytes());
        assert_eq!(un("plain"), Ok(b"plain".to_vec()));
        assert_eq!(
            un(r#"\a\b\f\n\r\t\v\\\"\'\s"#),
            Ok(b"\x07\x08\x0c\n\r\t\x0b\\\"' ".to_vec())
        );
        assert_eq!(un(r"\x41\x7a\xff"), Ok(b"Az\xff".to_vec()));
        assert_eq!(un(r"\101\000\377"), Ok(b"A\0\xff".to_vec()));
        assert_eq!(un(r"\u00e4"), Ok("ä".as_bytes().to_vec()));
        assert_eq!(un(r"\u0000"), Ok(b"\0".to_vec()));
        assert_eq!(un(r"\U0001F600"), Ok("😀".as_bytes().to_vec()));
        for bad in [
            r"\",
            r"\q",
            r"\x4",
            r"\xg0",
            r"\8",
            r"\12",
            r"\400",
            r"\u12",
            r"\U0000D800",
            r"\U00110000",
            r"\UFFFFFFFF",
            r"\U0000FFFE",
        ] {
            assert_eq!(errno(un(bad)), EINVAL, "{bad}");
        }
    }

    #[test]
    fn firmware() {
        let cwd = Path::new("/home/u");
        let fw = |s: &str| parse_firmware(OsStr::new(s), cwd);
        assert_eq!(fw(""), Ok(Firmware::Auto));
        assert_eq!(fw("auto"), Ok(Firmware::Auto));
        assert_eq!(fw("uefi"), Ok(Firmware::Uefi));
        assert_eq!(fw("bios"), Ok(Firmware::Bios));
        assert_eq!(fw("none"), Ok(Firmware::None));
        assert_eq!(fw("list"), Ok(Firmware::List));
        assert_eq!(fw("describe"), Ok(Firmware::Describe));
        assert_eq!(
            fw("/usr/share/qemu/firmware/ovmf.json"),
            Ok(Firmware::Descriptor(
                "/usr/share/qemu/firmware/ovmf.json".into()
            ))
        );
        assert_eq!(
            fw("./ovmf.json"),
            Ok(Firmware::Descriptor("/home/u/ovmf.json".into()))
        );
        for bad in ["ovmf.json", "../ovmf.json", "UEFI", "List", "yes"] {
            assert_eq!(errno(fw(bad)), EINVAL, "{bad}");
        }
    }

    #[test]
    fn efi_nvram_options() {
        let cwd = Path::new("/home/u");
        let t = |s: &str| parse_efi_nvram_template(OsStr::new(s), cwd);
        assert_eq!(t(""), Ok(None));
        assert_eq!(t("/v.fd"), Ok(Some("/v.fd".into())));
        assert_eq!(t("./v.fd"), Ok(Some("/home/u/v.fd".into())));
        assert_eq!(errno(t("v.fd")), EINVAL);
        let st = |s: &str| parse_efi_nvram_state(OsStr::new(s), cwd);
        assert_eq!(st("auto"), Ok(NvramState::Auto));
        assert_eq!(st("yes"), Ok(NvramState::Auto));
        assert_eq!(st("off"), Ok(NvramState::Off));
        assert_eq!(st("0"), Ok(NvramState::Off));
        assert_eq!(st(""), Ok(NvramState::Off));
        assert_eq!(
            st("/var/vm.vars"),
            Ok(NvramState::Path("/var/vm.vars".into()))
        );
        assert_eq!(
            st("./vm.vars"),
            Ok(NvramState::Path("/home/u/vm.vars".into()))
        );
        for bad in ["vm.vars", "Auto", "../x"] {
            assert_eq!(errno(st(bad)), EINVAL, "{bad}");
        }
    }

    #[test]
    fn paths() {
        let cwd = Path::new("/home/u");
        let p = |s: &str| parse_path(OsStr::new(s), cwd);
        assert_eq!(p(""), None);
        assert_eq!(p("/boot/vmlinuz"), Some("/boot/vmlinuz".into()));
        assert_eq!(p("vmlinuz"), Some("/home/u/vmlinuz".into()));
        assert_eq!(p("./a//b/./c/"), Some("/home/u/a/b/c".into()));
        assert_eq!(p("../k"), Some("/home/u/../k".into()));
        assert_eq!(p("/"), Some("/".into()));
    }
}
