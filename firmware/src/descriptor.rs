//! QEMU firmware descriptors (the `firmware.json` interop files distributions install in
//! `/usr/share/qemu/firmware`), read as systemd-vmspawn reads them: the fields vmspawn requires
//! must be there with the right JSON types, anything else may be added.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, io_text};

/// QEMU's name for the architecture rvmspawn runs guests of.
pub const ARCHITECTURE: &str = "x86_64";

/// The machine type vmspawn gives QEMU on x86, and the one rvmspawn's chipset models.
pub const MACHINE_TYPE: &str = "q35";

/// The feature of firmware that only works with System Management Mode, which rvmspawn does
/// not emulate yet.
pub const REQUIRES_SMM: &str = "requires-smm";

/// Descriptors are a few hundred bytes; anything this large is not one.
const MAX_DESCRIPTOR_SIZE: u64 = 1 << 20;

/// A file the firmware is loaded from, with its format (`raw`, `qcow2`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FlashFile {
    /// The file, normally absolute.
    pub filename: PathBuf,
    /// Its image format.
    pub format: String,
}

/// How the firmware is put into the machine.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Mapping {
    /// `flash` (pflash devices), `memory` (loaded like `-bios`) or `kernel`.
    pub device: String,
    /// For flash: `split` (the default: read-only code plus a variable store made from a
    /// template), `combined` (one writable image) or `stateless` (code only).
    #[serde(default)]
    pub mode: Option<String>,
    /// For flash: the code image.
    #[serde(default)]
    pub executable: Option<FlashFile>,
    /// For split flash: the variable store template.
    #[serde(default)]
    pub nvram_template: Option<FlashFile>,
    /// For `memory` and `kernel`: the image.
    #[serde(default)]
    pub filename: Option<PathBuf>,
}

impl Mapping {
    /// The flash mode, `split` when the descriptor does not say.
    pub fn flash_mode(&self) -> &str {
        self.mode.as_deref().unwrap_or("split")
    }
}

/// An architecture and the machine types (globs) the firmware supports on it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Target {
    /// QEMU's architecture name, e.g. `x86_64`, `i386`, `aarch64`.
    pub architecture: String,
    /// Machine type globs, e.g. `pc-q35-*`.
    pub machines: Vec<String>,
}

/// The fields vmspawn requires, with their JSON types.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Fields {
    description: String,
    interface_types: Vec<String>,
    mapping: Mapping,
    targets: Vec<Target>,
    features: Vec<String>,
    // Only its presence and type are required.
    #[allow(dead_code)]
    tags: Vec<serde_json::Value>,
}

/// One parsed descriptor file.
#[derive(Debug, Clone, PartialEq)]
pub struct Descriptor {
    /// The file it was read from.
    pub path: PathBuf,
    /// Free text.
    pub description: String,
    /// `uefi`, `bios`, `openfirmware`, ...
    pub interface_types: Vec<String>,
    /// How the firmware is loaded.
    pub mapping: Mapping,
    /// Architectures and machine types.
    pub targets: Vec<Target>,
    /// Feature strings, e.g. `secure-boot`, `requires-smm`, `enrolled-keys`, `acpi-s3`.
    pub features: Vec<String>,
    /// The whole document, for `--firmware=describe`.
    pub raw: serde_json::Value,
}

impl Descriptor {
    /// Reads and parses a descriptor file. A missing or unreadable file is [`Error::Read`]
    /// (with its errno); bad JSON or a missing field is [`Error::Malformed`].
    pub fn load(path: &Path) -> Result<Descriptor, Error> {
        let read_error = |source| Error::Read {
            path: path.to_owned(),
            source,
        };
        let file = fs::File::open(path).map_err(read_error)?;
        let mut text = Vec::new();
        file.take(MAX_DESCRIPTOR_SIZE + 1)
            .read_to_end(&mut text)
            .map_err(read_error)?;
        if text.len() as u64 > MAX_DESCRIPTOR_SIZE {
            return Err(Error::Malformed {
                path: path.to_owned(),
                reason: format!("larger than {MAX_DESCRIPTOR_SIZE} bytes"),
            });
        }
        Descriptor::parse(path, &text).map_err(|reason| Error::Malformed {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses descriptor text; `path` is only recorded. The error is the reason.
    pub fn parse(path: &Path, text: &[u8]) -> Result<Descriptor, String> {
        let raw: serde_json::Value = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        let fields = Fields::deserialize(&raw).map_err(|e| e.to_string())?;
        let mapping = &fields.mapping;
        match mapping.device.as_str() {
            "flash" if mapping.executable.is_none() => {
                return Err("flash mapping without 'executable'".to_owned());
            }
            "memory" | "kernel" if mapping.filename.is_none() => {
                return Err(format!("{} mapping without 'filename'", mapping.device));
            }
            _ => {}
        }
        Ok(Descriptor {
            path: path.to_owned(),
            description: fields.description,
            interface_types: fields.interface_types,
            mapping: fields.mapping,
            targets: fields.targets,
            features: fields.features,
            raw,
        })
    }

    /// Whether the descriptor lists `feature`.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// Whether the firmware only works with SMM (every Secure Boot build of OVMF).
    pub fn requires_smm(&self) -> bool {
        self.has_feature(REQUIRES_SMM)
    }

    /// Whether rvmspawn's machine can run this firmware at all, whatever features were asked
    /// for: UEFI, for x86_64 on a q35 machine, as split flash (read-only code plus a variable
    /// store made from a template) in raw format. Returns the code and the template, or why
    /// not. SMM is not checked here; see [`Descriptor::requires_smm`].
    pub fn platform_files(&self) -> Result<(&Path, &Path), String> {
        if !self.interface_types.iter().any(|t| t == "uefi") {
            return Err(format!(
                "not UEFI firmware (interface types: {})",
                list(&self.interface_types)
            ));
        }
        let ours: Vec<&Target> = self
            .targets
            .iter()
            .filter(|t| t.architecture == ARCHITECTURE)
            .collect();
        if ours.is_empty() {
            let archs: Vec<String> = self
                .targets
                .iter()
                .map(|t| t.architecture.clone())
                .collect();
            return Err(format!(
                "not for {ARCHITECTURE} (architectures: {})",
                list(&archs)
            ));
        }
        if !ours
            .iter()
            .any(|t| t.machines.iter().any(|m| machine_is_q35(m)))
        {
            let machines: Vec<String> = ours.iter().flat_map(|t| t.machines.clone()).collect();
            return Err(format!(
                "not for the {MACHINE_TYPE} machine type (machines: {})",
                list(&machines)
            ));
        }
        let mapping = &self.mapping;
        if mapping.device != "flash" {
            return Err(format!(
                "mapping device '{}' is not supported, only flash",
                mapping.device
            ));
        }
        if mapping.flash_mode() != "split" {
            return Err(format!(
                "flash mode '{}' is not supported, only split (code and variable store)",
                mapping.flash_mode()
            ));
        }
        let (Some(code), Some(vars)) = (&mapping.executable, &mapping.nvram_template) else {
            return Err("split flash without an 'nvram-template'".to_owned());
        };
        for file in [code, vars] {
            if file.format != "raw" {
                return Err(format!(
                    "format '{}' of '{}' is not supported, only raw",
                    file.format,
                    file.filename.display()
                ));
            }
        }
        Ok((&code.filename, &vars.filename))
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Whether a descriptor's machine glob covers rvmspawn's q35 machine.
///
/// vmspawn matches against its QEMU machine type `q35`, an alias that QEMU resolves to the
/// newest versioned type (`pc-q35-9.2`, ...), while distributions' descriptors list versioned
/// globs such as `pc-q35-*`. rvmspawn models no particular version, so a glob matches when it
/// matches the alias itself (`q35`, `*`) or any versioned q35 type: it starts with `pc-q35-`,
/// or it matches a current one. `pc-i440fx-*` alone does not match.
pub fn machine_is_q35(glob: &str) -> bool {
    const VERSIONED: &str = "pc-q35-";
    const EXAMPLE: &str = "pc-q35-9.2";
    glob.starts_with(VERSIONED) || fnmatch(glob, MACHINE_TYPE) || fnmatch(glob, EXAMPLE)
}

/// Shell-style glob matching as fnmatch(3) without flags: `*`, `?`, bracket expressions
/// (`[a-z]`, `[!x]` or `[^x]`) and backslash escapes. A malformed bracket matches itself.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point: the most recent `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => match bracket(&p[pi..], n[ni]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                // Not a bracket expression: a literal '['.
                None => (n[ni] == '[').then_some(1),
            },
            Some('\\') if pi + 1 < p.len() => (p[pi + 1] == n[ni]).then_some(2),
            Some(&c) => (c == n[ni]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(len), _) => {
                pi += len;
                ni += 1;
            }
            (None, Some((star_pi, star_ni))) => {
                // Let the last star swallow one more character.
                pi = star_pi + 1;
                ni = star_ni + 1;
                star = Some((star_pi, star_ni + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the bracket expression at the start of `p`. Returns whether it
/// matched and the expression's length, or `None` when `p` has no closing bracket.
fn bracket(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&hi| hi != ']') {
            let hi = p[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

/// Why reading a descriptor failed, as a short reason for a skip list.
pub(crate) fn load_error_reason(err: &Error) -> String {
    match err {
        Error::Read { source, .. } => format!("cannot be read: {}", io_text(source)),
        Error::Malformed { reason, .. } => format!("malformed: {reason}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's `60-edk2-x86_64.json`, verbatim in content.
    pub const DEBIAN_60: &str = r#"{
        "description": "UEFI firmware for x86_64, without Secure Boot without SMM, with empty varstore",
        "interface-types": ["uefi"],
        "mapping": {
            "device": "flash",
            "executable": {"filename": "/usr/share/OVMF/OVMF_CODE_4M.fd", "format": "raw"},
            "nvram-template": {"filename": "/usr/share/OVMF/OVMF_VARS_4M.fd", "format": "raw"}
        },
        "targets": [{"architecture": "x86_64", "machines": ["pc-i440fx-*", "pc-q35-*"]}],
        "features": ["acpi-s3", "amd-sev", "verbose-dynamic"],
        "tags": []
    }"#;

    fn parse(text: &str) -> Result<Descriptor, String> {
        Descriptor::parse(Path::new("/d.json"), text.as_bytes())
    }

    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(DEBIAN_60).unwrap();
        edit(&mut v);
        v.to_string()
    }

    #[test]
    fn debian_descriptor_parses_and_is_usable() {
        let d = parse(DEBIAN_60).unwrap();
        assert_eq!(d.path, Path::new("/d.json"));
        assert_eq!(d.mapping.flash_mode(), "split");
        assert_eq!(d.features, ["acpi-s3", "amd-sev", "verbose-dynamic"]);
        assert!(!d.requires_smm());
        let (code, vars) = d.platform_files().unwrap();
        assert_eq!(code, Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"));
        assert_eq!(vars, Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd"));
        assert_eq!(d.raw["description"], d.description.as_str());
    }

    #[test]
    fn mandatory_fields_and_types() {
        for field in [
            "description",
            "interface-types",
            "mapping",
            "targets",
            "features",
            "tags",
        ] {
            let text = edited(|v| {
                v.as_object_mut().unwrap().remove(field);
            });
            let err = parse(&text).unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
        }
        let err = parse(&edited(|v| v["features"] = "secure-boot".into())).unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
        let err = parse(&edited(|v| {
            v["mapping"]["executable"]["format"].take();
        }))
        .unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
        let err = parse(&edited(|v| {
            v["mapping"].as_object_mut().unwrap().remove("executable");
        }))
        .unwrap_err();
        assert!(err.contains("executable"), "{err}");
        assert!(parse("{").unwrap_err().contains("EOF"));
        assert!(parse("").is_err());
        // Extensions are allowed.
        let d = parse(&edited(|v| v["x-vendor"] = 1.into())).unwrap();
        assert_eq!(d.raw["x-vendor"], 1);
    }

    #[test]
    fn platform_checks() {
        let reason = |edit: fn(&mut serde_json::Value)| {
            parse(&edited(edit)).unwrap().platform_files().unwrap_err()
        };
        assert!(
            reason(|v| v["interface-types"] = serde_json::json!(["bios"])).contains("not UEFI")
        );
        let r = reason(|v| v["targets"][0]["architecture"] = "i386".into());
        assert!(r.contains("not for x86_64") && r.contains("i386"), "{r}");
        let r = reason(|v| v["targets"][0]["machines"] = serde_json::json!(["pc-i440fx-*"]));
        assert!(r.contains("q35") && r.contains("pc-i440fx-*"), "{r}");
        let r = reason(|v| v["mapping"]["mode"] = "stateless".into());
        assert!(r.contains("stateless"), "{r}");
        let r = reason(|v| v["mapping"]["mode"] = "combined".into());
        assert!(r.contains("combined"), "{r}");
        let r = reason(|v| {
            v["mapping"]
                .as_object_mut()
                .unwrap()
                .remove("nvram-template");
        });
        assert!(r.contains("nvram-template"), "{r}");
        let r = reason(|v| v["mapping"]["executable"]["format"] = "qcow2".into());
        assert!(r.contains("qcow2"), "{r}");
        let r = reason(|v| v["mapping"]["nvram-template"]["format"] = "qcow2".into());
        assert!(r.contains("OVMF_VARS_4M.fd"), "{r}");
        let r = reason(|v| {
            v["mapping"] = serde_json::json!({"device": "memory", "filename": "/bios.bin"})
        });
        assert!(r.contains("'memory'"), "{r}");
    }

    #[test]
    fn machine_globs() {
        for yes in [
            "pc-q35-*",
            "pc-q35-2.*",
            "q35",
            "*",
            "pc-*",
            "pc-q35-[0-9]*",
        ] {
            assert!(machine_is_q35(yes), "{yes}");
        }
        for no in ["pc-i440fx-*", "pc", "virt", "microvm", "pc-i440fx-q35", ""] {
            assert!(!machine_is_q35(no), "{no}");
        }
    }

    #[test]
    fn globbing() {
        assert!(fnmatch("pc-q35-*", "pc-q35-9.2"));
        assert!(fnmatch("*", ""));
        assert!(fnmatch("a*b*c", "aXXbYYc"));
        assert!(!fnmatch("a*b*c", "aXXbYY"));
        assert!(fnmatch("a?c", "abc"));
        assert!(!fnmatch("a?c", "ac"));
        assert!(fnmatch("[a-c]x", "bx"));
        assert!(!fnmatch("[!a-c]x", "bx"));
        assert!(fnmatch("[^a-c]x", "dx"));
        assert!(fnmatch("[]]", "]"));
        assert!(fnmatch("[a-]", "-"));
        assert!(fnmatch("\\*", "*"));
        assert!(!fnmatch("\\*", "x"));
        assert!(fnmatch("[x", "[x"));
        assert!(!fnmatch("abc", "abcd"));
        assert!(fnmatch("**x", "x"));
    }
}
