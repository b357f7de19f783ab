//! Where descriptors are found and which one is used, as systemd-vmspawn decides.
//!
//! The search path is `$XDG_CONFIG_HOME/qemu/firmware` (`~/.config/qemu/firmware` without it),
//! `/etc/qemu/firmware`, `/usr/share/qemu/firmware`. The `*.json` files there are merged by
//! file name with systemd's conf-files rules: the first directory holding a name wins, an empty
//! file or a symbolic link to `/dev/null` masks the name, and the result is sorted by file name.
//! Selection walks that list and takes the first descriptor that is UEFI for x86_64 on q35 as
//! split raw flash (see [`Descriptor::platform_files`]), has every required feature and no
//! excluded one (`enrolled-keys` is excluded unless asked for). Firmware that requires SMM
//! (every Secure Boot build of OVMF) is taken when the host's KVM has SMM, as vmspawn takes it;
//! without SMM it is passed over with the reason ([`SmmSupport`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::descriptor::{Descriptor, load_error_reason};
use crate::error::{Error, invalid};

/// The feature vmspawn's `--secure-boot=` requires or excludes.
pub const SECURE_BOOT: &str = "secure-boot";

/// Excluded unless asked for: firmware with pre-enrolled keys has been known to cause
/// trouble (vmspawn's default since systemd v257).
pub const ENROLLED_KEYS: &str = "enrolled-keys";

/// Whether the machine can run firmware that requires SMM: the host's KVM must emulate it
/// (`KVM_CAP_X86_SMM`; kernels built without `CONFIG_KVM_SMM`, and some hypervisors' `/dev/kvm`,
/// lack it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmmSupport {
    /// SMM firmware can run.
    Available,
    /// It cannot; why not, as a clause ("this host's KVM has no SMM (KVM_CAP_X86_SMM)").
    Unavailable(String),
}

impl SmmSupport {
    /// Why a descriptor that requires SMM is passed over, if it is.
    fn refusal(&self) -> Option<String> {
        match self {
            SmmSupport::Available => None,
            SmmSupport::Unavailable(why) => {
                Some(format!("requires SMM (feature 'requires-smm'), but {why}"))
            }
        }
    }
}

/// The directories descriptors are searched in, highest priority first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPath {
    /// Searched in this order; the first holding a file name wins.
    pub dirs: Vec<PathBuf>,
}

impl SearchPath {
    /// The system-wide directories, after the user's own.
    pub const SYSTEM_DIRS: [&str; 2] = ["/etc/qemu/firmware", "/usr/share/qemu/firmware"];

    /// vmspawn's search path, given the values of `$XDG_CONFIG_HOME` and `$HOME`: the user's
    /// directory is `$XDG_CONFIG_HOME/qemu/firmware`, else `$HOME/.config/qemu/firmware`, as
    /// systemd's `xdg_user_config_dir()` has it. Empty or relative values count as unset, as
    /// the XDG base directory specification asks.
    pub fn system(xdg_config_home: Option<&Path>, home: Option<&Path>) -> SearchPath {
        let xdg_config_home = xdg_config_home.filter(|p| p.is_absolute());
        let home = home.filter(|p| p.is_absolute());
        let user = match (xdg_config_home, home) {
            (Some(config), _) => Some(config.join("qemu/firmware")),
            (None, Some(home)) => Some(home.join(".config/qemu/firmware")),
            (None, None) => None,
        };
        SearchPath {
            dirs: user
                .into_iter()
                .chain(SearchPath::SYSTEM_DIRS.iter().map(PathBuf::from))
                .collect(),
        }
    }

    /// A colon-separated list of directories (empty items are skipped), for a test or a
    /// packager that wants its own descriptors instead of the system's.
    pub fn from_colon_list(list: &OsStr) -> SearchPath {
        SearchPath {
            dirs: list
                .as_bytes()
                .split(|&b| b == b':')
                .filter(|d| !d.is_empty())
                .map(|d| PathBuf::from(OsStr::from_bytes(d)))
                .collect(),
        }
    }
}

/// What a descriptor file in a search directory amounts to.
enum Entry {
    Descriptor,
    /// An empty file or a device node (a link to `/dev/null`): hides the name.
    Mask,
    /// A directory, FIFO, dangling link...: not considered at all.
    Ignored,
}

fn classify(path: &Path) -> Entry {
    match fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() == 0 => Entry::Mask,
        Ok(m) if m.is_file() => Entry::Descriptor,
        Ok(m) if m.file_type().is_char_device() || m.file_type().is_block_device() => Entry::Mask,
        _ => Entry::Ignored,
    }
}

/// Whether a directory entry is looked at: `*.json`, not hidden.
fn is_descriptor_name(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name.ends_with(b".json") && !name.starts_with(b".")
}

/// Every descriptor of the search path, in vmspawn's order (file name), each name from the
/// first directory that has it; masked names are left out. Missing or unreadable directories
/// are skipped.
pub fn list(search: &SearchPath) -> Vec<PathBuf> {
    // `None`: masked. Byte order of the names, as strcmp() sorts them.
    let mut by_name: BTreeMap<OsString, Option<PathBuf>> = BTreeMap::new();
    for dir in &search.dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !is_descriptor_name(&name) || by_name.contains_key(&name) {
                continue;
            }
            let path = dir.join(&name);
            match classify(&path) {
                Entry::Descriptor => {
                    by_name.insert(name, Some(path));
                }
                Entry::Mask => {
                    by_name.insert(name, None);
                }
                Entry::Ignored => {}
            }
        }
    }
    by_name.into_values().flatten().collect()
}

/// Every feature string of the descriptors found, sorted, each once (`--firmware-features=list`).
/// Descriptors that cannot be read or parsed contribute nothing.
pub fn all_features(search: &SearchPath) -> Vec<String> {
    let mut all = BTreeSet::new();
    for path in list(search) {
        if let Ok(d) = Descriptor::load(&path) {
            all.extend(d.features);
        }
    }
    all.into_iter().collect()
}

/// The features asked for with `--firmware-features=` and `--secure-boot=`.
///
/// A feature in both sets counts as required: inclusion beats exclusion, as in vmspawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Every one must be present.
    pub features_required: BTreeSet<String>,
    /// None may be present (unless also required).
    pub features_excluded: BTreeSet<String>,
}

impl Default for Request {
    /// Nothing required; `enrolled-keys` excluded.
    fn default() -> Request {
        Request {
            features_required: BTreeSet::new(),
            features_excluded: BTreeSet::from([ENROLLED_KEYS.to_owned()]),
        }
    }
}

impl Request {
    /// Applies one `--firmware-features=` value other than `list`: the empty string clears
    /// both sets (the default exclusion too); otherwise a comma-separated list where `~F`
    /// excludes F and F requires it, added to what earlier values asked for.
    pub fn add_features(&mut self, spec: &str) {
        if spec.is_empty() {
            self.features_required.clear();
            self.features_excluded.clear();
            return;
        }
        for feature in spec.split(',').filter(|f| !f.is_empty()) {
            match feature.strip_prefix('~') {
                Some(excluded) => self.features_excluded.insert(excluded.to_owned()),
                None => self.features_required.insert(feature.to_owned()),
            };
        }
    }

    /// Applies `--secure-boot=`: yes requires `secure-boot`, no excludes it, auto (`None`)
    /// drops it from both sets; the last one given wins.
    pub fn set_secure_boot(&mut self, secure_boot: Option<bool>) {
        self.features_required.remove(SECURE_BOOT);
        self.features_excluded.remove(SECURE_BOOT);
        match secure_boot {
            Some(true) => self.features_required.insert(SECURE_BOOT.to_owned()),
            Some(false) => self.features_excluded.insert(SECURE_BOOT.to_owned()),
            None => false,
        };
    }

    /// Whether Secure Boot firmware is required (every Secure Boot build of OVMF requires SMM).
    pub fn wants_secure_boot(&self) -> bool {
        self.features_required.contains(SECURE_BOOT)
    }

    /// Whether a descriptor's features satisfy the request, or why not.
    pub fn check(&self, descriptor: &Descriptor) -> Result<(), String> {
        if let Some(missing) = self
            .features_required
            .iter()
            .find(|f| !descriptor.has_feature(f))
        {
            return Err(format!("lacks required feature '{missing}'"));
        }
        if let Some(excluded) = self
            .features_excluded
            .iter()
            .find(|f| !self.features_required.contains(*f) && descriptor.has_feature(f))
        {
            return Err(format!("has feature '{excluded}', which is excluded"));
        }
        Ok(())
    }
}

/// A descriptor passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The descriptor file.
    pub path: PathBuf,
    /// One short clause, e.g. "not for x86_64 (architectures: i386)".
    pub reason: String,
    /// Passed over only because it requires SMM, which the host lacks: vmspawn would have
    /// taken it.
    pub requires_smm: bool,
}

/// Firmware rvmspawn can boot: a descriptor and the files it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Firmware {
    /// The descriptor.
    pub descriptor: Descriptor,
    /// The read-only code image (`OVMF_CODE_4M.fd`).
    pub code: PathBuf,
    /// The variable store template (`OVMF_VARS_4M.fd`).
    pub vars_template: PathBuf,
    /// It requires SMM (`requires-smm`): the machine gets SMRAM and a variable store only SMM
    /// can program.
    pub smm: bool,
}

impl Firmware {
    /// Checks that the code image and the variable store template that will be used
    /// (`vars_template`, when `--efi-nvram-template=` overrides the descriptor's) are regular
    /// files that can be read, so that a missing package fails before the VM is built.
    pub fn check_files(&self, vars_template: Option<&Path>) -> Result<(), Error> {
        check_readable("firmware code", &self.code)?;
        check_readable(
            "EFI variable store template",
            vars_template.unwrap_or(&self.vars_template),
        )?;
        Ok(())
    }
}

/// Fails with the errno of stat() or open(), or EINVAL for something other than a regular file.
pub(crate) fn check_readable(what: &'static str, path: &Path) -> Result<fs::File, Error> {
    let open_error = |source| Error::Open {
        what,
        path: path.to_owned(),
        source,
    };
    // stat() first: opening a FIFO would block.
    let meta = fs::metadata(path).map_err(open_error)?;
    if !meta.is_file() {
        return Err(invalid(what, path, "not a regular file"));
    }
    fs::File::open(path).map_err(open_error)
}

/// Loads the descriptor given with `--firmware=PATH`. vmspawn takes it as it is; rvmspawn
/// checks what its machine can run ([`Descriptor::platform_files`], SMM as `smm` says) and
/// refuses the rest with EOPNOTSUPP. The feature request does not apply to an explicit choice.
pub fn load(path: &Path, smm: &SmmSupport) -> Result<Firmware, Error> {
    let descriptor = Descriptor::load(path)?;
    let unsuitable = |reason: String| Error::Unsuitable {
        path: path.to_owned(),
        reason,
    };
    let (code, vars) = descriptor.platform_files().map_err(unsuitable)?;
    let (code, vars_template) = (code.to_owned(), vars.to_owned());
    let needs_smm = descriptor.requires_smm();
    if let Some(why) = smm.refusal().filter(|_| needs_smm) {
        return Err(unsuitable(format!("the firmware {why}")));
    }
    Ok(Firmware {
        descriptor,
        code,
        vars_template,
        smm: needs_smm,
    })
}

/// The outcome of [`select`].
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// The first usable descriptor.
    pub chosen: Firmware,
    /// The descriptors before it, with the reasons they were passed over.
    pub skipped: Vec<Skipped>,
}

impl Selection {
    /// The descriptor vmspawn would have chosen instead, when rvmspawn passed it over only
    /// because it requires SMM and the host lacks it (on Debian: `50-edk2-x86_64-secure.json`).
    pub fn vmspawn_choice(&self) -> Option<&Path> {
        self.skipped
            .iter()
            .find(|s| s.requires_smm)
            .map(|s| s.path.as_path())
    }
}

/// Picks the firmware for a boot: the first descriptor of [`list`] that rvmspawn can run (SMM
/// as `smm` says) and that satisfies `request`. Asking for Secure Boot without SMM fails right
/// away (EOPNOTSUPP, vmspawn's message and the reason); finding nothing fails with ENOENT and
/// every reason.
pub fn select(
    search: &SearchPath,
    request: &Request,
    smm: &SmmSupport,
) -> Result<Selection, Error> {
    if let (true, SmmSupport::Unavailable(why)) = (request.wants_secure_boot(), smm) {
        return Err(Error::SecureBootUnsupported { why: why.clone() });
    }
    let mut skipped = Vec::new();
    let mut skip = |path: PathBuf, reason: String, requires_smm: bool| {
        skipped.push(Skipped {
            path,
            reason,
            requires_smm,
        })
    };
    for path in list(search) {
        let descriptor = match Descriptor::load(&path) {
            Ok(d) => d,
            Err(e) => {
                skip(path, load_error_reason(&e), false);
                continue;
            }
        };
        let (code, vars) = match descriptor.platform_files() {
            Ok((code, vars)) => (code.to_owned(), vars.to_owned()),
            Err(reason) => {
                skip(path, reason, false);
                continue;
            }
        };
        if let Err(reason) = request.check(&descriptor) {
            skip(path, reason, false);
            continue;
        }
        // Last, so that everything passed over for SMM alone is what vmspawn would take.
        let needs_smm = descriptor.requires_smm();
        if let Some(why) = smm.refusal().filter(|_| needs_smm) {
            skip(path, why, true);
            continue;
        }
        return Ok(Selection {
            chosen: Firmware {
                descriptor,
                code,
                vars_template: vars,
                smm: needs_smm,
            },
            skipped,
        });
    }
    Err(Error::NotFound {
        dirs: search.dirs.clone(),
        skipped,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A directory under the system's temporary directory, removed when dropped.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            let path = std::env::temp_dir()
                .join(format!("rvmspawn-firmware-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A descriptor like Debian's, for `code`, with these features.
    fn descriptor(code: &str, arch: &str, machines: &[&str], features: &[&str]) -> String {
        json!({
            "description": format!("test firmware {code}"),
            "interface-types": ["uefi"],
            "mapping": {
                "device": "flash",
                "executable": {"filename": code, "format": "raw"},
                "nvram-template": {"filename": "/fw/VARS.fd", "format": "raw"}
            },
            "targets": [{"architecture": arch, "machines": machines}],
            "features": features,
            "tags": []
        })
        .to_string()
    }

    fn plain(code: &str, features: &[&str]) -> String {
        descriptor(code, "x86_64", &["pc-i440fx-*", "pc-q35-*"], features)
    }

    /// Three directories (user, etc, usr) with the cases the selection must tell apart.
    struct Tree {
        root: TempDir,
        search: SearchPath,
    }

    impl Tree {
        fn new(tag: &str) -> Tree {
            let root = TempDir::new(tag);
            let dirs: Vec<PathBuf> = ["user", "etc", "usr"]
                .iter()
                .map(|d| root.0.join(d))
                .collect();
            for d in &dirs {
                fs::create_dir_all(d).unwrap();
            }
            Tree {
                root,
                search: SearchPath { dirs },
            }
        }

        fn write(&self, dir: usize, name: &str, text: &str) -> PathBuf {
            let path = self.search.dirs[dir].join(name);
            fs::write(&path, text).unwrap();
            path
        }

        /// Debian's set, plus the cases vmspawn's rules decide: masked, another
        /// architecture, i440fx only, malformed, enrolled keys, SMM.
        fn debian_like(tag: &str) -> Tree {
            let t = Tree::new(tag);
            let (user, etc, usr) = (0, 1, 2);
            // Masked by an empty file of the same name in a directory searched first.
            t.write(usr, "10-masked.json", &plain("/fw/masked.fd", &[]));
            t.write(etc, "10-masked.json", "");
            // A symbolic link to /dev/null masks too.
            t.write(usr, "15-linked.json", &plain("/fw/linked.fd", &[]));
            std::os::unix::fs::symlink("/dev/null", t.search.dirs[user].join("15-linked.json"))
                .unwrap();
            t.write(
                usr,
                "20-ia32.json",
                &descriptor("/fw/ia32.fd", "i386", &["pc-q35-*"], &[]),
            );
            t.write(
                usr,
                "25-i440fx.json",
                &descriptor("/fw/i440fx.fd", "x86_64", &["pc-i440fx-*"], &[]),
            );
            t.write(usr, "30-broken.json", "{\"description\": \"no more\"");
            t.write(
                usr,
                "40-edk2-x86_64-secure-enrolled.json",
                &plain(
                    "/fw/CODE.ms.fd",
                    &["enrolled-keys", "requires-smm", "secure-boot"],
                ),
            );
            t.write(
                usr,
                "50-edk2-x86_64-secure.json",
                &plain("/fw/CODE.secboot.fd", &["requires-smm", "secure-boot"]),
            );
            t.write(
                usr,
                "60-edk2-x86_64.json",
                &plain("/fw/CODE.fd", &["acpi-s3", "verbose-dynamic"]),
            );
            // Overridden by the same name in a directory searched first.
            t.write(
                usr,
                "70-override.json",
                &plain("/fw/system.fd", &["acpi-s3"]),
            );
            t.write(
                user,
                "70-override.json",
                &plain("/fw/user.fd", &["user-feature"]),
            );
            // Not descriptors.
            t.write(usr, "80-readme.txt", "x");
            t.write(usr, ".hidden.json", &plain("/fw/hidden.fd", &[]));
            fs::create_dir(t.search.dirs[usr].join("90-dir.json")).unwrap();
            t
        }

        fn names(&self, paths: &[PathBuf]) -> Vec<String> {
            paths
                .iter()
                .map(|p| {
                    let rel = p.strip_prefix(&self.root.0).unwrap();
                    rel.to_string_lossy().into_owned()
                })
                .collect()
        }
    }

    #[test]
    fn search_path() {
        let p = |x: Option<&str>, h: Option<&str>| {
            SearchPath::system(x.map(Path::new), h.map(Path::new)).dirs
        };
        assert_eq!(
            p(Some("/x"), Some("/home/u")),
            [
                Path::new("/x/qemu/firmware"),
                Path::new("/etc/qemu/firmware"),
                Path::new("/usr/share/qemu/firmware"),
            ]
        );
        assert_eq!(
            p(None, Some("/home/u"))[0],
            Path::new("/home/u/.config/qemu/firmware")
        );
        assert_eq!(
            p(Some("rel"), Some("/h"))[0],
            Path::new("/h/.config/qemu/firmware")
        );
        assert_eq!(p(None, None).len(), 2);
        assert_eq!(
            SearchPath::from_colon_list(OsStr::new("/a::/b:")).dirs,
            [Path::new("/a"), Path::new("/b")]
        );
        assert!(SearchPath::from_colon_list(OsStr::new("")).dirs.is_empty());
    }

    #[test]
    fn listing_merges_masks_and_sorts_by_name() {
        let t = Tree::debian_like("list");
        assert_eq!(
            t.names(&list(&t.search)),
            [
                "usr/20-ia32.json",
                "usr/25-i440fx.json",
                "usr/30-broken.json",
                "usr/40-edk2-x86_64-secure-enrolled.json",
                "usr/50-edk2-x86_64-secure.json",
                "usr/60-edk2-x86_64.json",
                "user/70-override.json",
            ]
        );
        // Missing directories are no error.
        let mut search = t.search.clone();
        search.dirs.insert(0, t.root.0.join("missing"));
        assert_eq!(list(&search).len(), 7);
    }

    #[test]
    fn features_of_all_descriptors() {
        let t = Tree::debian_like("features");
        assert_eq!(
            all_features(&t.search),
            [
                "acpi-s3",
                "enrolled-keys",
                "requires-smm",
                "secure-boot",
                "user-feature",
                "verbose-dynamic"
            ]
        );
    }

    /// A host without SMM, as this project's build machines' `/dev/kvm`.
    fn no_smm() -> SmmSupport {
        SmmSupport::Unavailable("this host's KVM has no SMM".into())
    }

    #[test]
    fn with_smm_the_selection_is_vmspawns() {
        let t = Tree::debian_like("select-smm");
        let s = select(&t.search, &Request::default(), &SmmSupport::Available).unwrap();
        assert_eq!(
            t.names(std::slice::from_ref(&s.chosen.descriptor.path)),
            ["usr/50-edk2-x86_64-secure.json"]
        );
        assert!(s.chosen.smm);
        assert_eq!(s.vmspawn_choice(), None);
        // --secure-boot=no: the plain build, which needs no SMM.
        let mut r = Request::default();
        r.set_secure_boot(Some(false));
        let s = select(&t.search, &r, &SmmSupport::Available).unwrap();
        assert_eq!(s.chosen.code, Path::new("/fw/CODE.fd"));
        assert!(!s.chosen.smm);
        // --secure-boot=yes: the same Secure Boot build (enrolled keys stay excluded).
        r.set_secure_boot(Some(true));
        let s = select(&t.search, &r, &SmmSupport::Available).unwrap();
        assert_eq!(
            t.names(std::slice::from_ref(&s.chosen.descriptor.path)),
            ["usr/50-edk2-x86_64-secure.json"]
        );
        // Asking for enrolled keys gets that build.
        r.add_features("enrolled-keys");
        let s = select(&t.search, &r, &SmmSupport::Available).unwrap();
        assert!(s.chosen.descriptor.has_feature("enrolled-keys"));
        assert!(s.chosen.smm);
    }

    #[test]
    fn selection_is_vmspawns_without_smm() {
        let t = Tree::debian_like("select");
        let s = select(&t.search, &Request::default(), &no_smm()).unwrap();
        assert_eq!(s.chosen.code, Path::new("/fw/CODE.fd"));
        assert_eq!(s.chosen.vars_template, Path::new("/fw/VARS.fd"));
        assert_eq!(
            t.names(std::slice::from_ref(&s.chosen.descriptor.path)),
            ["usr/60-edk2-x86_64.json"]
        );
        let skipped: Vec<(String, &str)> = s
            .skipped
            .iter()
            .map(|k| {
                (
                    t.names(std::slice::from_ref(&k.path)).remove(0),
                    k.reason.as_str(),
                )
            })
            .collect();
        assert_eq!(skipped.len(), 5, "{skipped:?}");
        assert!(skipped[0].1.contains("not for x86_64"), "{skipped:?}");
        assert!(skipped[0].1.contains("i386"), "{skipped:?}");
        assert!(skipped[1].1.contains("q35"), "{skipped:?}");
        assert!(skipped[2].1.starts_with("malformed: "), "{skipped:?}");
        assert!(skipped[3].1.contains("'enrolled-keys'"), "{skipped:?}");
        assert!(
            skipped[4].1.contains("requires SMM") && skipped[4].1.contains("has no SMM"),
            "{skipped:?}"
        );
        assert_eq!(
            s.skipped.iter().map(|k| k.requires_smm).collect::<Vec<_>>(),
            [false, false, false, false, true]
        );
        // vmspawn would boot the Secure Boot build.
        assert_eq!(
            t.names(&[s.vmspawn_choice().unwrap().to_owned()]),
            ["usr/50-edk2-x86_64-secure.json"]
        );
    }

    fn chosen_code(t: &Tree, request: &Request) -> Result<PathBuf, Error> {
        select(&t.search, request, &no_smm()).map(|s| s.chosen.code)
    }

    #[test]
    fn feature_requests() {
        let t = Tree::debian_like("request");
        let with = |specs: &[&str]| {
            let mut r = Request::default();
            for s in specs {
                r.add_features(s);
            }
            r
        };
        // A required feature the first usable one lacks moves on to the next.
        assert_eq!(
            chosen_code(&t, &with(&["user-feature"])).unwrap(),
            Path::new("/fw/user.fd")
        );
        // Excluding the first usable one's feature.
        assert_eq!(
            chosen_code(&t, &with(&["~verbose-dynamic"])).unwrap(),
            Path::new("/fw/user.fd")
        );
        // Requirements accumulate; all must hold.
        let err = chosen_code(&t, &with(&["acpi-s3", "user-feature"])).unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT);
        // "" clears both sets, the default exclusion too; inclusion beats exclusion.
        let r = with(&["~acpi-s3", "", "x,~y,,z"]);
        assert_eq!(
            r.features_required,
            BTreeSet::from(["x".into(), "z".into()])
        );
        assert_eq!(r.features_excluded, BTreeSet::from(["y".into()]));
        let r = with(&["~verbose-dynamic", "verbose-dynamic"]);
        assert_eq!(chosen_code(&t, &r).unwrap(), Path::new("/fw/CODE.fd"));
        // Without the default exclusion the enrolled-keys descriptor is only passed over for SMM.
        let s = select(&t.search, &with(&[""]), &no_smm()).unwrap();
        assert!(s.skipped[3].requires_smm, "{:?}", s.skipped);
    }

    #[test]
    fn secure_boot() {
        let t = Tree::debian_like("sb");
        let mut r = Request::default();
        r.set_secure_boot(Some(true));
        assert!(r.wants_secure_boot());
        let err = chosen_code(&t, &r).unwrap_err();
        assert!(matches!(err, Error::SecureBootUnsupported { .. }));
        assert_eq!(err.errno(), libc::EOPNOTSUPP);
        assert_eq!(
            err.to_string(),
            "Secure Boot requested, but selected OVMF firmware doesn't support it. (Every \
             Secure Boot firmware requires SMM, but this host's KVM has no SMM.)"
        );
        // The same through --firmware-features=.
        let mut r = Request::default();
        r.add_features("secure-boot");
        assert!(chosen_code(&t, &r).is_err_and(|e| e.errno() == libc::EOPNOTSUPP));
        // no: excluded; auto: neither, and the last one given wins.
        r.set_secure_boot(Some(false));
        assert!(r.features_excluded.contains(SECURE_BOOT));
        assert!(!r.wants_secure_boot());
        let s = select(&t.search, &r, &no_smm()).unwrap();
        assert_eq!(s.chosen.code, Path::new("/fw/CODE.fd"));
        assert!(
            s.skipped[4].reason.contains("'secure-boot'"),
            "{:?}",
            s.skipped
        );
        r.set_secure_boot(None);
        assert_eq!(r, Request::default());
    }

    #[test]
    fn nothing_found_names_every_reason() {
        let t = Tree::new("none");
        let err = chosen_code(&t, &Request::default()).unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT);
        let text = err.to_string();
        assert!(text.starts_with("Failed to find a usable UEFI firmware descriptor in '"));
        assert!(text.ends_with("there are none"), "{text}");
        t.write(2, "50-smm.json", &plain("/fw/s.fd", &["requires-smm"]));
        t.write(
            2,
            "60-arm.json",
            &descriptor("/fw/a.fd", "aarch64", &["virt-*"], &[]),
        );
        let text = chosen_code(&t, &Request::default())
            .unwrap_err()
            .to_string();
        assert!(text.contains("50-smm.json: requires SMM"), "{text}");
        assert!(
            text.contains("60-arm.json: not for x86_64 (architectures: aarch64)"),
            "{text}"
        );
    }

    #[test]
    fn explicit_descriptor() {
        let t = Tree::debian_like("explicit");
        let usr = &t.search.dirs[2];
        // Features do not matter for an explicit choice; the platform and SMM do.
        let fw = load(&usr.join("60-edk2-x86_64.json"), &no_smm()).unwrap();
        assert_eq!(fw.code, Path::new("/fw/CODE.fd"));
        let secure = usr.join("50-edk2-x86_64-secure.json");
        assert!(load(&secure, &SmmSupport::Available).unwrap().smm);
        let err = load(&secure, &no_smm()).unwrap_err();
        assert_eq!(err.errno(), libc::EOPNOTSUPP);
        let text = err.to_string();
        assert!(
            text.contains("50-edk2-x86_64-secure.json") && text.contains("SMM"),
            "{text}"
        );
        let err = load(&usr.join("20-ia32.json"), &no_smm()).unwrap_err();
        assert_eq!(err.errno(), libc::EOPNOTSUPP);
        assert!(err.to_string().contains("i386"), "{err}");
        let err = load(&usr.join("30-broken.json"), &no_smm()).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        assert!(err.to_string().contains("30-broken.json"), "{err}");
        let err = load(&usr.join("nonexistent.json"), &no_smm()).unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT);
        assert!(err.to_string().contains("nonexistent.json"), "{err}");
    }

    #[test]
    fn firmware_files_must_exist() {
        let t = Tree::new("files");
        let code = t.write(2, "CODE.fd", "code");
        let vars = t.write(2, "VARS.fd", "vars");
        let fw = Firmware {
            descriptor: Descriptor::parse(Path::new("/d.json"), plain("/x", &[]).as_bytes())
                .unwrap(),
            code: code.clone(),
            vars_template: vars.clone(),
            smm: false,
        };
        fw.check_files(None).unwrap();
        let missing = t.root.0.join("missing.fd");
        let err = fw.check_files(Some(&missing)).unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT);
        assert!(err.to_string().contains("missing.fd"), "{err}");
        let fw = Firmware {
            code: missing.clone(),
            ..fw
        };
        let err = fw.check_files(None).unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT);
        assert_eq!(
            err.to_string(),
            format!("Failed to open firmware code '{}'", missing.display())
        );
        let fw = Firmware {
            code: t.root.0.clone(),
            ..fw
        };
        assert_eq!(fw.check_files(None).unwrap_err().errno(), libc::EINVAL);
    }
}
