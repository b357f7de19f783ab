//! Finding the kernel of an OS tree by the Boot Loader Specification, as systemd-vmspawn does for
//! `--directory=` without `--linux=`.
//!
//! vmspawn treats `DIR/efi` as the EFI system partition (ESP) and `DIR/boot` as the extended boot
//! loader partition (XBOOTLDR), loads their boot entries with systemd's userspace boot loader
//! code (the code behind `bootctl list`), takes the default entry, and boots its kernel and
//! initrds with QEMU's `-kernel`/`-initrd`. [`find_boot_entry`] does the same, with these rules.
//!
//! # Where entries are looked for
//!
//! Only `DIR/efi` and `DIR/boot`, in that order, as vmspawn: not `DIR/boot/efi` (where Debian
//! mounts its ESP), which vmspawn does not look at either. In each of them:
//!
//! - Type #1 entries: the regular files `loader/entries/*.conf` (suffix in any case);
//! - Type #2 entries: the regular files `EFI/Linux/*.efi` (suffix in any case);
//! - `loader/loader.conf`, read from the ESP only (systemd reads it nowhere else; a tree whose
//!   ESP is mounted on `/boot` has its `loader.conf` there, and vmspawn ignores it too).
//!
//! Hidden files (a leading `.`) are passed over, as systemd does. Directory listings are sorted by
//! name, so the result never depends on the order the file system lists them in. A file seen
//! twice (the same inode, through a bind mount) counts once.
//!
//! # Type #1 entries
//!
//! Lines are stripped of white space at both ends; blank lines and lines starting with `#` are
//! skipped. The first word is the key, the rest (after white space) the value; a line without a
//! value is ignored, unknown keys are ignored. Read: `title`, `version`, `machine-id`, `sort-key`,
//! `architecture`, `linux` (the last one counts), `initrd` (repeatable, in order) and `options`
//! (repeatable, joined with spaces). `devicetree`, `devicetree-overlay`, `efi`, `uki`, `uki-url`,
//! `profile` and distribution keys (`grub_users`, ...) are ignored.
//!
//! `linux` and `initrd` paths are relative to the partition's root whether or not they start
//! with `/`; repeated and trailing `/` and `.` components are dropped. An entry is passed over
//! (and the reason reported if nothing else is found) when:
//! - it has no `linux` key (an entry with only `efi` or `uki` needs firmware, which vmspawn
//!   would not boot either: its kernel is whatever the `linux` key says);
//! - a `linux` or `initrd` path has a `..` component or ends in `/` (systemd drops such a path
//!   and keeps the entry, which then boots without the initrd or fails; we refuse the entry);
//! - its `architecture` is not `x64` (compared ignoring case), as systemd-boot passes over
//!   entries for other machines (vmspawn's userspace loader does not check, and would try to
//!   boot them);
//! - its file is larger than [`MAX_ENTRY_FILE`], not a regular file, or a symbolic link.
//!
//! # Type #2 entries
//!
//! Each `.efi` file is read with [`crate::uki::parse_uki`]. It must be a UKI (a `.linux`
//! section) for x86-64 with an `.osrel` section, whose os-release fields give the entry what
//! systemd gives it: the title (`PRETTY_NAME`, else `IMAGE_ID`, `NAME`, `ID`; one is required),
//! the version (`IMAGE_VERSION`, else `VERSION`, `VERSION_ID`, `BUILD_ID`) and the sort key
//! (`IMAGE_ID`, else `ID`). Only the default profile of a multi-profile UKI is an entry; systemd
//! lists one entry per profile (`ID@N`), which vmspawn would not choose unless `loader.conf` names
//! one.
//!
//! # Entry ids, boot counting
//!
//! An entry's id is its file name, suffix included (`fedora-6.10.conf`, `arch.efi`), without a
//! boot counter: `NAME+LEFT-DONE.conf` and `NAME+LEFT.conf` have the id `NAME.conf`. Ids must
//! consist of ASCII letters, digits and `+-_.@`. Entries with no tries left (`+0`) sort last;
//! counters are not updated (a VM boot is no boot attempt of the installed system).
//!
//! # Which entry is chosen
//!
//! All entries are sorted as systemd sorts them (`boot_entry_compare`), first to last:
//! 1. entries with no tries left go last;
//! 2. entries with a `sort-key` before those without;
//! 3. between two entries with one: by sort key (byte order), then by `machine-id` (none first,
//!    then byte order), then by `version`, newest first ([`crate::gpt::version_cmp`], the UAPI
//!    version comparison as systemd implements it: `6.10` is newer than `6.9`, `6.10~rc1` older
//!    than `6.10`);
//! 4. then by id, newest first by the same comparison;
//! 5. the same id twice (in both partitions): more tries left first, then fewer tries done;
//!    otherwise the ESP's first.
//!
//! The default entry is then the first one whose id matches `loader.conf`'s `default` pattern (a
//! shell glob: `*`, `?`, `[...]` with ranges and `!`/`^`, `\` escapes; letters match in either
//! case; character classes such as `[[:digit:]]` are not supported), else the first entry. A
//! pattern starting with `@` (`@saved`) matches nothing, as for vmspawn, which reads no EFI
//! variables; `preferred`, `LoaderEntryDefault` and the other EFI variables play no part.
//!
//! vmspawn falls back to the first Type #2 entry, then the first Type #1 entry, when there is
//! no default entry. systemd's loader always has a default entry when there are entries at all
//! (the first one), so that fallback never applies, and is not repeated here.
//!
//! # What is returned, and the untrusted tree
//!
//! The tree is the guest's: its files are untrusted, and the guest may change them. Entry files
//! and `loader.conf` are read up to [`MAX_ENTRY_FILE`] bytes, at most [`MAX_DIR_ENTRIES`]
//! directory entries are looked at per directory (more is an error rather than an arbitrary
//! choice), and no symbolic link below `DIR` is followed: the partitions, the directories in
//! them, the entry files and the kernel and initrds must all be reached without one (vmspawn
//! follows them; a link pointing out of the tree would make the host read its own files for
//! the guest). Each file is opened, checked to be the very file found without links, and
//! returned open in the [`BootEntry`], so that a caller can keep booting the same files whatever
//! happens to the tree afterwards.
//!
//! Errors for the chosen entry (its kernel or an initrd missing, not regular, a symbolic link,
//! the kernel not a kernel) are errors, not a reason to pick another entry: vmspawn would fail
//! the same way.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::gpt::{ReadAt, version_cmp};
use crate::uki::{self, UkiError};

/// The largest Type #1 entry or `loader.conf` read. Real ones are a few hundred bytes.
pub const MAX_ENTRY_FILE: u64 = 64 << 10;

/// The most directory entries looked at in one `loader/entries` or `EFI/Linux` directory.
pub const MAX_DIR_ENTRIES: usize = 1024;

/// How many reasons for passed-over entries an error reports.
const MAX_REASONS: usize = 8;

/// The ESP and the XBOOTLDR partition's mount points in the tree, in the order they are read.
const ESP: &str = "efi";
const XBOOTLDR: &str = "boot";

/// The boot loader's name for x86-64, as in the `architecture` key.
const NATIVE_ARCH: &str = "x64";

// O_NOFOLLOW: never open a symbolic link; O_NONBLOCK: a FIFO swapped in cannot hang the open.
// The values differ between architectures (O_NOFOLLOW is 0o400000 on x86-64, 0o100000 on
// arm64), so they come from libc, as do the errno values of the error kinds below.
use libc::{E2BIG, EAGAIN, EINVAL, EIO, ELOOP, ENOENT, ENOEXEC, ENOTDIR, O_NOFOLLOW, O_NONBLOCK};

/// The flags every file of the guest's tree is opened with.
const OPEN_FLAGS: i32 = O_NOFOLLOW | O_NONBLOCK;

/// Errors from looking for the boot entry of a tree.
#[derive(Debug, thiserror::Error)]
pub enum BlsError {
    /// A partition or entry directory exists but could not be read.
    #[error("Failed to read '{}': {}", .path.display(), strerror(.source))]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Neither partition has a usable entry; the reasons say why entries were passed over.
    #[error("{}", no_entry_message(.root, .skipped))]
    NoEntry {
        /// The tree.
        root: PathBuf,
        /// Why each entry that was found was passed over (`PATH: reason`), in the order found.
        skipped: Vec<String>,
    },
    /// A directory has more entries than are looked at.
    #[error(
        "'{}' has more than {MAX_DIR_ENTRIES} entries; refusing to choose a boot entry among \
         some of them",
        .dir.display()
    )]
    TooManyEntries {
        /// The directory.
        dir: PathBuf,
    },
    /// A file of the chosen entry cannot be booted.
    #[error("Boot entry '{id}': cannot use '{}': {why}", .path.display())]
    EntryFile {
        /// The entry's id.
        id: String,
        /// The kernel or initrd.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
        /// The errno describing it.
        errno: i32,
    },
}

impl BlsError {
    /// The errno that describes this error (the process exit code).
    pub fn errno(&self) -> i32 {
        match self {
            BlsError::Io { source, .. } => source.raw_os_error().unwrap_or(EIO),
            BlsError::NoEntry { .. } => ENOENT,
            BlsError::TooManyEntries { .. } => E2BIG,
            BlsError::EntryFile { errno, .. } => *errno,
        }
    }
}

fn no_entry_message(root: &Path, skipped: &[String]) -> String {
    let mut text = format!(
        "Failed to find a boot entry in '{}' (Boot Loader Specification entries \
         loader/entries/*.conf or EFI/Linux/*.efi in '{ESP}/' or '{XBOOTLDR}/')",
        root.display()
    );
    if !skipped.is_empty() {
        text.push_str("; passed over: ");
        text.push_str(&skipped[..skipped.len().min(MAX_REASONS)].join("; "));
        if skipped.len() > MAX_REASONS {
            let _ = write!(text, "; and {} more", skipped.len() - MAX_REASONS);
        }
    }
    text
}

/// The two kinds of entries of the Boot Loader Specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    /// A `loader/entries/*.conf` file naming a kernel and initrds.
    Type1,
    /// A unified kernel image in `EFI/Linux/`.
    Type2,
}

/// The chosen boot entry, with its kernel and initrds open.
#[derive(Debug)]
pub struct BootEntry {
    /// The entry's id: its file name without a boot counter.
    pub id: String,
    /// Type #1 or Type #2.
    pub entry_type: EntryType,
    /// The entry's `title`, or for a UKI the name from its os-release data.
    pub title: Option<String>,
    /// The `.conf` or `.efi` file.
    pub source: PathBuf,
    /// The kernel: the `linux` file of a Type #1 entry, the UKI itself for Type #2.
    pub kernel: PathBuf,
    /// The initrds of a Type #1 entry, in order (a UKI carries its own).
    pub initrds: Vec<PathBuf>,
    /// The kernel command line the entry asks for: a Type #1 entry's `options`, a UKI's
    /// `.cmdline`. vmspawn does not pass a Type #1 entry's options to the kernel (they name the
    /// installed system's root, not the VM's).
    pub options: Option<String>,
    /// [`BootEntry::kernel`], open.
    pub kernel_file: File,
    /// [`BootEntry::initrds`], open, in the same order.
    pub initrd_files: Vec<File>,
}

/// Finds the boot entry systemd-vmspawn would boot for the OS tree `root` (see the module
/// documentation for every rule) and opens its files.
pub fn find_boot_entry(root: &Path) -> Result<BootEntry, BlsError> {
    let mut scan = Scan::new(root);
    for part in [ESP, XBOOTLDR] {
        scan.partition(part)?;
    }
    let mut candidates = std::mem::take(&mut scan.candidates);
    candidates.sort_by(entry_order);
    let Some(chosen) = select(&candidates, scan.default_pattern.as_deref()) else {
        return Err(BlsError::NoEntry {
            root: root.to_path_buf(),
            skipped: scan.skipped,
        });
    };
    candidates.swap_remove(chosen).open(root)
}

/// An entry that was found, before any is chosen.
#[derive(Debug)]
struct Candidate {
    id: String,
    entry_type: EntryType,
    title: Option<String>,
    sort_key: Option<String>,
    machine_id: Option<String>,
    version: Option<String>,
    tries_left: Option<u32>,
    tries_done: Option<u32>,
    /// The partition ([`ESP`] or [`XBOOTLDR`]), which `linux` and `initrds` are relative to.
    partition: &'static str,
    source: PathBuf,
    /// Normalized and relative: no `..`, no leading `/`.
    linux: PathBuf,
    initrds: Vec<PathBuf>,
    options: Option<String>,
    /// A Type #2 entry's UKI, opened when it was read.
    file: Option<File>,
}

impl Candidate {
    /// Opens the entry's files below the tree `root`, from the tree's root down: the partition
    /// itself may have been swapped for a symbolic link since it was read.
    fn open(mut self, root: &Path) -> Result<BootEntry, BlsError> {
        let uki = self.file.take();
        let partition = Path::new(self.partition);
        let fail = |path: PathBuf, why: String, errno: i32| BlsError::EntryFile {
            id: self.id.clone(),
            path,
            why,
            errno,
        };
        let open = |rel: &Path| {
            let path = root.join(partition).join(rel);
            match open_beneath(root, &partition.join(rel)) {
                Ok(file) => Ok((path, file)),
                Err(r) => Err(fail(path, r.why, r.errno)),
            }
        };
        let (kernel, kernel_file) = match uki {
            Some(file) => (self.source.clone(), file),
            None => {
                let (path, file) = open(&self.linux)?;
                if !looks_like_kernel(&file) {
                    return Err(fail(
                        path,
                        "not a Linux kernel (neither a bzImage, an ELF vmlinux nor a PE image)"
                            .into(),
                        ENOEXEC,
                    ));
                }
                (path, file)
            }
        };
        let (initrds, initrd_files) = self
            .initrds
            .iter()
            .map(|rel| open(rel))
            .collect::<Result<(Vec<_>, Vec<_>), _>>()?;
        Ok(BootEntry {
            id: self.id,
            entry_type: self.entry_type,
            title: self.title,
            source: self.source,
            kernel,
            initrds,
            options: self.options,
            kernel_file,
            initrd_files,
        })
    }
}

/// Why a file below the tree cannot be used.
#[derive(Debug)]
struct Refusal {
    why: String,
    errno: i32,
}

impl Refusal {
    fn io(e: &io::Error) -> Refusal {
        Refusal {
            why: strerror(e),
            errno: e.raw_os_error().unwrap_or(EIO),
        }
    }
}

/// An I/O error as the C library says it, without the " (os error N)" std appends.
fn strerror(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(errno) => text
            .strip_suffix(&format!(" (os error {errno})"))
            .map_or(text.clone(), str::to_owned),
        None => text,
    }
}

/// What the file system says `rel` below `base` is, with every component of `rel` checked not to
/// be a symbolic link, and every one but the last to be a directory.
fn lstat_beneath(base: &Path, rel: &Path) -> Result<fs::Metadata, Refusal> {
    let mut path = base.to_path_buf();
    // The base is the caller's (the directory the user named), and may be a link itself.
    let mut meta = fs::metadata(base).map_err(|e| Refusal::io(&e))?;
    for component in rel.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        if !meta.is_dir() {
            return Err(Refusal {
                why: format!("'{}' is not a directory", path.display()),
                errno: ENOTDIR,
            });
        }
        path.push(name);
        meta = fs::symlink_metadata(&path).map_err(|e| Refusal::io(&e))?;
        if meta.file_type().is_symlink() {
            return Err(Refusal {
                why: format!(
                    "'{}' is a symbolic link, which is not followed in the guest's tree",
                    path.display()
                ),
                errno: ELOOP,
            });
        }
    }
    Ok(meta)
}

/// Opens the regular file `rel` below `base`, reached without symbolic links. The file opened is
/// checked to be the one found that way, so a link swapped in between cannot redirect the open.
fn open_beneath(base: &Path, rel: &Path) -> Result<File, Refusal> {
    let meta = lstat_beneath(base, rel)?;
    if !meta.is_file() {
        return Err(Refusal {
            why: "not a regular file".into(),
            errno: EINVAL,
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OPEN_FLAGS)
        .open(base.join(rel))
        .map_err(|e| Refusal::io(&e))?;
    let opened = file.metadata().map_err(|e| Refusal::io(&e))?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) || !opened.is_file() {
        return Err(Refusal {
            why: "it changed while it was being opened".into(),
            errno: EAGAIN,
        });
    }
    Ok(file)
}

/// Reads at most [`MAX_ENTRY_FILE`] bytes of an entry file; a larger file is refused.
fn read_small(file: &File) -> Result<String, String> {
    let mut bytes = Vec::new();
    file.take(MAX_ENTRY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Refusal::io(&e).why)?;
    if bytes.len() as u64 > MAX_ENTRY_FILE {
        return Err(format!("larger than {} KiB", MAX_ENTRY_FILE >> 10));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether the file starts like something the loader can boot: a bzImage (`HdrS` at 0x202), an
/// ELF file, or a PE image (a UKI, or an EFI-stub kernel, which is also a bzImage).
fn looks_like_kernel(file: &File) -> bool {
    let mut head = [0; 0x206];
    if ReadAt::read_exact_at(file, &mut head, 0).is_err() {
        return false;
    }
    head[0x202..0x206] == *b"HdrS" || head[..4] == *b"\x7fELF" || uki::is_pe(file)
}

/// What the partitions give while they are read.
struct Scan<'a> {
    root: &'a Path,
    candidates: Vec<Candidate>,
    skipped: Vec<String>,
    default_pattern: Option<String>,
    /// (device, inode) of every entry file read, so that a file seen twice counts once.
    seen: HashSet<(u64, u64)>,
}

impl<'a> Scan<'a> {
    fn new(root: &'a Path) -> Scan<'a> {
        Scan {
            root,
            candidates: Vec::new(),
            skipped: Vec::new(),
            default_pattern: None,
            seen: HashSet::new(),
        }
    }

    /// `path` relative to the tree, for reasons that stay short.
    fn shown(&self, path: &Path) -> String {
        path.strip_prefix(self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    fn skip(&mut self, path: &Path, why: impl AsRef<str>) {
        let shown = self.shown(path);
        self.skipped.push(format!("{shown}: {}", why.as_ref()));
    }

    /// Whether `rel` below the tree is a directory reached without symbolic links. Absent is no
    /// reason to report; anything else is.
    fn directory(&mut self, rel: &Path) -> Result<bool, BlsError> {
        match lstat_beneath(self.root, rel) {
            Ok(meta) if meta.is_dir() => Ok(true),
            Ok(_) => {
                self.skip(&self.root.join(rel), "not a directory");
                Ok(false)
            }
            Err(r) if r.errno == ENOENT => Ok(false),
            Err(r) if r.errno == ELOOP || r.errno == ENOTDIR => {
                self.skip(&self.root.join(rel), r.why);
                Ok(false)
            }
            Err(r) => Err(BlsError::Io {
                path: self.root.join(rel),
                source: io::Error::from_raw_os_error(r.errno),
            }),
        }
    }

    fn partition(&mut self, part: &'static str) -> Result<(), BlsError> {
        if !self.directory(Path::new(part))? {
            return Ok(());
        }
        if part == ESP {
            self.loader_conf();
        }
        let entries = Path::new(part).join("loader/entries");
        if self.directory(&entries)? {
            for name in self.list(&entries, ".conf")? {
                self.type1(part, &entries, &name);
            }
        }
        let linux = Path::new(part).join("EFI/Linux");
        if self.directory(&linux)? {
            for name in self.list(&linux, ".efi")? {
                self.type2(part, &linux, &name);
            }
        }
        Ok(())
    }

    /// The names in the directory `rel` that end in `suffix` in any case, sorted, without hidden
    /// files.
    fn list(&mut self, rel: &Path, suffix: &str) -> Result<Vec<String>, BlsError> {
        let dir = self.root.join(rel);
        let io_error = |source| BlsError::Io {
            path: dir.clone(),
            source,
        };
        let mut names = Vec::new();
        for (n, item) in fs::read_dir(&dir).map_err(io_error)?.enumerate() {
            if n == MAX_DIR_ENTRIES {
                return Err(BlsError::TooManyEntries { dir });
            }
            let item = item.map_err(io_error)?;
            let name = item.file_name();
            let Some(name) = name.to_str() else {
                if has_suffix(name.as_encoded_bytes(), suffix) {
                    self.skip(&dir.join(&name), "the file name is not UTF-8");
                }
                continue;
            };
            if !name.starts_with('.') && has_suffix(name.as_bytes(), suffix) {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Opens an entry file, once per inode; `None` (with the reason noted) when it is not usable.
    /// An entry file's path, its id and boot counters, and the file, open; `None` (with the
    /// reason noted) when its name or the file is unusable.
    #[allow(
        clippy::type_complexity,
        reason = "a private tuple, taken apart at once"
    )]
    fn entry_file(
        &mut self,
        dir: &Path,
        name: &str,
    ) -> Option<(PathBuf, (String, Option<u32>, Option<u32>), File)> {
        let path = self.root.join(dir).join(name);
        let split = match entry_id(name) {
            Ok(split) => split,
            Err(why) => {
                self.skip(&path, why);
                return None;
            }
        };
        let file = self.open_entry(dir, name)?;
        Some((path, split, file))
    }

    fn open_entry(&mut self, dir: &Path, name: &str) -> Option<File> {
        let path = self.root.join(dir).join(name);
        let file = match open_beneath(self.root, &dir.join(name)) {
            Ok(file) => file,
            Err(r) => {
                self.skip(&path, r.why);
                return None;
            }
        };
        match file.metadata() {
            Ok(meta) => self.seen.insert((meta.dev(), meta.ino())).then_some(file),
            Err(e) => {
                self.skip(&path, Refusal::io(&e).why);
                None
            }
        }
    }

    fn loader_conf(&mut self) {
        let rel = Path::new(ESP).join("loader/loader.conf");
        let path = self.root.join(&rel);
        let file = match open_beneath(self.root, &rel) {
            Ok(file) => file,
            Err(r) if r.errno == ENOENT => return,
            Err(r) => {
                self.skip(&path, format!("{} (ignored)", r.why));
                return;
            }
        };
        match read_small(&file) {
            Ok(text) => {
                self.default_pattern = key_values(&text)
                    .filter(|(key, _)| *key == "default")
                    .map(|(_, value)| value.to_owned())
                    .last();
            }
            Err(why) => self.skip(&path, format!("{why} (ignored)")),
        }
    }

    fn type1(&mut self, partition: &'static str, dir: &Path, name: &str) {
        let Some((path, (id, tries_left, tries_done), file)) = self.entry_file(dir, name) else {
            return;
        };
        let text = match read_small(&file) {
            Ok(text) => text,
            Err(why) => return self.skip(&path, why),
        };
        let entry = match parse_type1(&text) {
            Ok(entry) => entry,
            Err(why) => return self.skip(&path, why),
        };
        self.candidates.push(Candidate {
            id,
            entry_type: EntryType::Type1,
            title: entry.title,
            sort_key: entry.sort_key,
            machine_id: entry.machine_id,
            version: entry.version,
            tries_left,
            tries_done,
            partition,
            source: path,
            linux: entry.linux,
            initrds: entry.initrds,
            options: entry.options,
            file: None,
        });
    }

    fn type2(&mut self, partition: &'static str, dir: &Path, name: &str) {
        let Some((path, (id, tries_left, tries_done), file)) = self.entry_file(dir, name) else {
            return;
        };
        let uki = match uki::parse_uki(&file) {
            Ok(uki) => uki,
            Err(UkiError::NotUki) => {
                return self.skip(&path, "not a unified kernel image (no .linux section)");
            }
            Err(e) => return self.skip(&path, e.to_string()),
        };
        if uki.machine != uki::MACHINE_X86_64 {
            return self.skip(
                &path,
                format!(
                    "a UKI for another architecture (PE machine {:#06x})",
                    uki.machine
                ),
            );
        }
        let Some(osrel) = uki.osrel else {
            return self.skip(&path, "the UKI has no .osrel section");
        };
        let osrel = match uki::read_text(&file, osrel) {
            Ok(text) => OsRelease::parse(&text),
            Err(e) => return self.skip(&path, format!("its .osrel section: {e}")),
        };
        let Some(title) = osrel.name() else {
            return self.skip(
                &path,
                "its .osrel data has no name (PRETTY_NAME, NAME, ID...)",
            );
        };
        let title = title.to_owned();
        self.candidates.push(Candidate {
            id,
            entry_type: EntryType::Type2,
            title: Some(title),
            sort_key: osrel.sort_key().map(str::to_owned),
            machine_id: None,
            version: osrel.version().map(str::to_owned),
            tries_left,
            tries_done,
            partition,
            linux: dir.strip_prefix(partition).unwrap_or(dir).join(name),
            source: path,
            initrds: Vec::new(),
            options: Some(uki.cmdline_text).filter(|c| !c.is_empty()),
            file: Some(file),
        });
    }
}

fn has_suffix(name: &[u8], suffix: &str) -> bool {
    name.len() > suffix.len()
        && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// The non-comment lines of an entry or `loader.conf`: (key, value), the value not empty.
fn key_values(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        let (key, value) = line.split_once(char::is_whitespace)?;
        let value = value.trim_start();
        (!value.is_empty()).then_some((key, value))
    })
}

/// The parts of a Type #1 entry that are used.
#[derive(Debug, Default, PartialEq, Eq)]
struct Type1 {
    title: Option<String>,
    version: Option<String>,
    machine_id: Option<String>,
    sort_key: Option<String>,
    linux: PathBuf,
    initrds: Vec<PathBuf>,
    options: Option<String>,
}

/// Parses a Type #1 entry; `Err` says why it is passed over.
fn parse_type1(text: &str) -> Result<Type1, String> {
    let mut entry = Type1::default();
    let mut linux = None;
    let mut options: Vec<&str> = Vec::new();
    for (key, value) in key_values(text) {
        let owned = || Some(value.to_owned());
        match key {
            "title" => entry.title = owned(),
            "version" => entry.version = owned(),
            "machine-id" => entry.machine_id = owned(),
            "sort-key" => entry.sort_key = owned(),
            "options" => options.push(value),
            "linux" => linux = Some(entry_path("linux", value)?),
            "initrd" => entry.initrds.push(entry_path("initrd", value)?),
            "architecture" if !value.eq_ignore_ascii_case(NATIVE_ARCH) => {
                return Err(format!(
                    "for architecture '{value}', not this machine's '{NATIVE_ARCH}'"
                ));
            }
            _ => {}
        }
    }
    entry.linux = linux.ok_or("no 'linux' key (the kernel)")?;
    entry.options = Some(options.join(" ")).filter(|o| !o.is_empty());
    Ok(entry)
}

/// A `linux` or `initrd` value as a path relative to the partition, or why it is refused.
fn entry_path(key: &str, value: &str) -> Result<PathBuf, String> {
    if value.ends_with('/') {
        return Err(format!("the '{key}' path '{value}' names a directory"));
    }
    let mut path = PathBuf::new();
    for part in value.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "the '{key}' path '{value}' has a '..' component (it may leave the partition)"
                ));
            }
            part => path.push(part),
        }
    }
    if path.as_os_str().is_empty() {
        return Err(format!("the '{key}' path '{value}' names no file"));
    }
    Ok(path)
}

/// An entry's id and boot counter from its file name: `NAME+LEFT[-DONE].SUFFIX` is `NAME.SUFFIX`
/// with LEFT tries left and DONE done. `Err` says why the name is refused.
fn entry_id(name: &str) -> Result<(String, Option<u32>, Option<u32>), String> {
    let (id, left, done) = split_counter(name)?;
    let valid = !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-_.@".contains(&b));
    if !valid {
        return Err(format!(
            "'{id}' is not a valid entry name (ASCII letters, digits and +-_.@ only)"
        ));
    }
    Ok((id, left, done))
}

fn split_counter(name: &str) -> Result<(String, Option<u32>, Option<u32>), String> {
    let unsplit = || Ok((name.to_owned(), None, None));
    let Some(dot) = name.rfind('.') else {
        return unsplit();
    };
    let Some(plus) = name[..dot].rfind('+') else {
        return unsplit();
    };
    let counter = &name[plus + 1..dot];
    let (left, done) = match counter.split_once('-') {
        Some((left, done)) => (left, Some(done)),
        None => (counter, None),
    };
    let number = |digits: &str| {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        // systemd-boot's limit.
        match digits.parse::<u32>() {
            Ok(n) if n <= i32::MAX as u32 => Ok(Some(n)),
            _ => Err(format!("the boot counter in '{name}' is out of range")),
        }
    };
    let Some(left) = number(left)? else {
        return unsplit();
    };
    let done = match done {
        Some(done) => match number(done)? {
            Some(done) => Some(done),
            None => return unsplit(),
        },
        None => None,
    };
    Ok((
        format!("{}{}", &name[..plus], &name[dot..]),
        Some(left),
        done,
    ))
}

/// The fields of a UKI's os-release data that make its entry.
#[derive(Debug, Default)]
struct OsRelease {
    pretty_name: Option<String>,
    image_id: Option<String>,
    name: Option<String>,
    id: Option<String>,
    image_version: Option<String>,
    version: Option<String>,
    version_id: Option<String>,
    build_id: Option<String>,
}

impl OsRelease {
    /// os-release's shell-like `KEY=VALUE` lines; a value in quotes loses them, and in double
    /// quotes `\` escapes the next character. Empty values count as unset.
    fn parse(text: &str) -> OsRelease {
        let mut os = OsRelease::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = unquote(value.trim());
            if value.is_empty() {
                continue;
            }
            let field = match key.trim() {
                "PRETTY_NAME" => &mut os.pretty_name,
                "IMAGE_ID" => &mut os.image_id,
                "NAME" => &mut os.name,
                "ID" => &mut os.id,
                "IMAGE_VERSION" => &mut os.image_version,
                "VERSION" => &mut os.version,
                "VERSION_ID" => &mut os.version_id,
                "BUILD_ID" => &mut os.build_id,
                _ => continue,
            };
            *field = Some(value);
        }
        os
    }

    fn name(&self) -> Option<&str> {
        first_of(&[&self.pretty_name, &self.image_id, &self.name, &self.id])
    }

    fn version(&self) -> Option<&str> {
        first_of(&[
            &self.image_version,
            &self.version,
            &self.version_id,
            &self.build_id,
        ])
    }

    fn sort_key(&self) -> Option<&str> {
        first_of(&[&self.image_id, &self.id])
    }
}

fn first_of<'a>(fields: &[&'a Option<String>]) -> Option<&'a str> {
    fields.iter().find_map(|f| f.as_deref())
}

fn unquote(value: &str) -> String {
    let inner = |q: char| {
        value
            .strip_prefix(q)
            .and_then(|v| v.strip_suffix(q))
            .filter(|_| value.len() >= 2)
    };
    if let Some(single) = inner('\'') {
        return single.to_owned();
    }
    let Some(double) = inner('"') else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(double.len());
    let mut chars = double.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// systemd's order of boot entries, first to last (see the module documentation).
fn entry_order(a: &Candidate, b: &Candidate) -> Ordering {
    let version = |c: &Candidate| c.version.clone().unwrap_or_default();
    (a.tries_left == Some(0))
        .cmp(&(b.tries_left == Some(0)))
        .then_with(|| a.sort_key.is_none().cmp(&b.sort_key.is_none()))
        .then_with(|| match (&a.sort_key, &b.sort_key) {
            (Some(ka), Some(kb)) => ka
                .cmp(kb)
                .then_with(|| a.machine_id.cmp(&b.machine_id))
                .then_with(|| version_cmp(&version(b), &version(a))),
            _ => Ordering::Equal,
        })
        .then_with(|| version_cmp(&b.id, &a.id))
        .then_with(|| match (a.tries_left, b.tries_left) {
            (Some(la), Some(lb)) => lb.cmp(&la).then_with(|| {
                a.tries_done
                    .unwrap_or(u32::MAX)
                    .cmp(&b.tries_done.unwrap_or(u32::MAX))
            }),
            _ => Ordering::Equal,
        })
}

/// The index of the default entry among `sorted` entries: the first whose id matches
/// `loader.conf`'s `default` pattern, else the first.
fn select(sorted: &[Candidate], pattern: Option<&str>) -> Option<usize> {
    if sorted.is_empty() {
        return None;
    }
    let matched = pattern
        .filter(|p| !p.starts_with('@'))
        .and_then(|p| sorted.iter().position(|c| glob_match(p, &c.id)));
    Some(matched.unwrap_or(0))
}

/// fnmatch(3) with `FNM_CASEFOLD` (ASCII letters), no other flags: `*` and `?` match any
/// character, `/` and a leading `.` included.
fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().map(|c| c.to_ascii_lowercase()).collect();
    let s: Vec<char> = name.chars().map(|c| c.to_ascii_lowercase()).collect();
    let (mut pi, mut si) = (0, 0);
    // Where to resume after the last `*`: the pattern after it, and the next name position
    // that the `*` could swallow up to.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() && p[pi] == '*' {
            pi += 1;
            star = Some((pi, si));
            continue;
        }
        if pi == p.len() && si == s.len() {
            return true;
        }
        let next = s
            .get(si)
            .filter(|_| pi < p.len())
            .and_then(|&c| match_one(&p, pi, c));
        if let Some(next) = next {
            pi = next;
            si += 1;
            continue;
        }
        match star {
            Some((after, from)) if from < s.len() => {
                star = Some((after, from + 1));
                pi = after;
                si = from + 1;
            }
            _ => return false,
        }
    }
}

/// Whether the pattern element at `p[pi]` (not `*`) matches `c`; if so, where the next element
/// starts.
fn match_one(p: &[char], pi: usize, c: char) -> Option<usize> {
    match p[pi] {
        '?' => Some(pi + 1),
        '\\' if pi + 1 < p.len() => (p[pi + 1] == c).then_some(pi + 2),
        '[' => match bracket(p, pi + 1, c) {
            Some((matched, next)) => matched.then_some(next),
            // No closing bracket: a literal `[`.
            None => (c == '[').then_some(pi + 1),
        },
        literal => (literal == c).then_some(pi + 1),
    }
}

/// A bracket expression starting after its `[` at `p[start]`: whether it matches `c`, and where
/// it ends; `None` when it is not closed.
fn bracket(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start;
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
        let lo = if lo == '\\' {
            i += 1;
            *p.get(i)?
        } else {
            lo
        };
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&hi| hi != ']') {
            let mut hi = p[i + 2];
            i += 2;
            if hi == '\\' {
                i += 1;
                hi = *p.get(i)?;
            }
            matched |= lo <= c && c <= hi;
        } else {
            matched |= lo == c;
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::fs::symlink;

    /// A tree in a fresh temporary directory, removed when dropped.
    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str) -> Tree {
            let dir =
                std::env::temp_dir().join(format!("rvmspawn-bls-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Tree(dir)
        }

        fn write(&self, rel: &str, data: impl AsRef<[u8]>) -> &Tree {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
            self
        }

        fn find(&self) -> Result<BootEntry, BlsError> {
            find_boot_entry(&self.0)
        }

        fn id(&self) -> String {
            self.find().unwrap().id
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Enough of a bzImage to pass [`looks_like_kernel`], tagged so tests can tell kernels apart.
    fn bzimage(tag: &str) -> Vec<u8> {
        let mut k = vec![0; 0x400];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k.extend_from_slice(tag.as_bytes());
        k
    }

    /// A minimal x86-64 UKI: a PE32+ with `.osrel`, `.cmdline` and `.linux` sections.
    fn uki(osrel: &str, cmdline: &str) -> Vec<u8> {
        uki_for(uki::MACHINE_X86_64, osrel, cmdline)
    }

    fn uki_for(machine: u16, osrel: &str, cmdline: &str) -> Vec<u8> {
        let sections: [(&[u8], &[u8]); 3] = [
            (b".osrel", osrel.as_bytes()),
            (b".cmdline", cmdline.as_bytes()),
            (b".linux", b"kernel"),
        ];
        let (pe, optional_len) = (0x40usize, 2usize);
        let table = pe + 24 + optional_len;
        let mut img = vec![0; 0x200];
        img[..2].copy_from_slice(b"MZ");
        img[0x3c..0x40].copy_from_slice(&(pe as u32).to_le_bytes());
        img[pe..pe + 4].copy_from_slice(b"PE\0\0");
        img[pe + 4..pe + 6].copy_from_slice(&machine.to_le_bytes());
        img[pe + 6..pe + 8].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        img[pe + 20..pe + 22].copy_from_slice(&(optional_len as u16).to_le_bytes());
        img[pe + 24..pe + 26].copy_from_slice(&0x20bu16.to_le_bytes());
        for (i, (name, data)) in sections.iter().enumerate() {
            let at = img.len();
            img.extend_from_slice(data);
            let entry = table + 40 * i;
            img[entry..entry + name.len()].copy_from_slice(name);
            let size = (data.len() as u32).to_le_bytes();
            img[entry + 8..entry + 12].copy_from_slice(&size);
            img[entry + 16..entry + 20].copy_from_slice(&size);
            img[entry + 20..entry + 24].copy_from_slice(&(at as u32).to_le_bytes());
        }
        img
    }

    fn read_all(mut file: &File) -> Vec<u8> {
        let mut data = Vec::new();
        file.read_to_end(&mut data).unwrap();
        data
    }

    #[test]
    fn type1_only() {
        let t = Tree::new("type1");
        t.write("boot/vmlinuz-6.9", bzimage("k"))
            .write("boot/initrd-a", "A")
            .write("boot/sub/initrd-b", "B")
            .write(
                "boot/loader/entries/debian-6.9.conf",
                "# a comment\n\
                 title  Debian GNU/Linux\n\
                 \n\
                 version 6.9\n\
                 linux /vmlinuz-6.9\n\
                 initrd /initrd-a\n\
                 initrd sub//./initrd-b\n\
                 options root=UUID=1234 ro\n\
                 options  quiet\n\
                 devicetree /dtb\n\
                 grub_users $grub_users\n",
            );
        let e = t.find().unwrap();
        assert_eq!(e.id, "debian-6.9.conf");
        assert_eq!(e.entry_type, EntryType::Type1);
        assert_eq!(e.title.as_deref(), Some("Debian GNU/Linux"));
        assert_eq!(e.kernel, t.0.join("boot/vmlinuz-6.9"));
        assert_eq!(
            e.initrds,
            [t.0.join("boot/initrd-a"), t.0.join("boot/sub/initrd-b")]
        );
        assert_eq!(e.options.as_deref(), Some("root=UUID=1234 ro quiet"));
        assert_eq!(e.source, t.0.join("boot/loader/entries/debian-6.9.conf"));
        assert_eq!(read_all(&e.kernel_file), bzimage("k"));
        let initrds: Vec<_> = e.initrd_files.iter().map(read_all).collect();
        assert_eq!(initrds, [b"A".to_vec(), b"B".to_vec()]);
    }

    #[test]
    fn type2_only() {
        let t = Tree::new("type2");
        t.write(
            "efi/EFI/Linux/arch-linux.EFI",
            uki(
                "ID=arch\nPRETTY_NAME=\"Arch Linux\"\nBUILD_ID=rolling\n",
                " quiet  rw ",
            ),
        );
        let e = t.find().unwrap();
        assert_eq!(e.id, "arch-linux.EFI");
        assert_eq!(e.entry_type, EntryType::Type2);
        assert_eq!(e.title.as_deref(), Some("Arch Linux"));
        assert_eq!(e.kernel, t.0.join("efi/EFI/Linux/arch-linux.EFI"));
        assert!(e.initrds.is_empty() && e.initrd_files.is_empty());
        assert_eq!(e.options.as_deref(), Some("quiet  rw"));
        assert_eq!(&read_all(&e.kernel_file)[..2], b"MZ");
    }

    #[test]
    fn newest_version_first_among_entries_with_a_sort_key() {
        let t = Tree::new("versions");
        for v in ["6.9", "6.10", "6.10~rc1", "6.1"] {
            t.write(&format!("boot/vmlinuz-{v}"), bzimage(v)).write(
                &format!("boot/loader/entries/fedora-{v}.conf"),
                format!("sort-key fedora\nversion {v}\nlinux /vmlinuz-{v}\n"),
            );
        }
        let e = t.find().unwrap();
        assert_eq!(e.id, "fedora-6.10.conf");
        assert_eq!(read_all(&e.kernel_file), bzimage("6.10"));
    }

    #[test]
    fn sorting_like_systemd() {
        let t = Tree::new("sorting");
        t.write("boot/k", bzimage(""));
        let entry = |name: &str, extra: &str| {
            t.write(
                &format!("boot/loader/entries/{name}"),
                format!("linux /k\n{extra}"),
            );
        };
        // Without sort keys: by id, newest first.
        entry("a-1.conf", "");
        entry("a-2.conf", "");
        assert_eq!(t.id(), "a-2.conf");
        // An entry with a sort key beats every entry without one.
        entry("0-old.conf", "sort-key zzz\nversion 1\n");
        assert_eq!(t.id(), "0-old.conf");
        // Sort keys in byte order, before versions.
        entry("1-other.conf", "sort-key aaa\nversion 0.1\n");
        assert_eq!(t.id(), "1-other.conf");
        // Same sort key: entries without machine-id first, then by machine-id.
        entry("2.conf", "sort-key aaa\nmachine-id bbbb\nversion 9\n");
        assert_eq!(t.id(), "1-other.conf");
        fs::remove_file(t.0.join("boot/loader/entries/1-other.conf")).unwrap();
        entry("3.conf", "sort-key aaa\nmachine-id aaaa\nversion 1\n");
        assert_eq!(t.id(), "3.conf");
        // Same sort key and machine: newest version; none is oldest.
        entry("4.conf", "sort-key aaa\nmachine-id aaaa\n");
        assert_eq!(t.id(), "3.conf");
        entry("5.conf", "sort-key aaa\nmachine-id aaaa\nversion 1.0.1\n");
        assert_eq!(t.id(), "5.conf");
    }

    #[test]
    fn type1_and_type2_together() {
        let t = Tree::new("both");
        t.write("boot/vmlinuz", bzimage("t1"))
            .write("boot/loader/entries/t1.conf", "linux /vmlinuz\n");
        t.write("efi/EFI/Linux/t2.efi", uki("ID=zz\n", ""));
        // The UKI has a sort key (its os-release ID), the .conf entry none.
        assert_eq!(t.find().unwrap().entry_type, EntryType::Type2);
        // Both with the same sort key: the newer version wins, whatever its type.
        t.write(
            "boot/loader/entries/t1.conf",
            "sort-key zz\nversion 13\nlinux /vmlinuz\n",
        );
        t.write("efi/EFI/Linux/t2.efi", uki("ID=zz\nVERSION_ID=12\n", ""));
        assert_eq!(t.id(), "t1.conf");
        t.write(
            "efi/EFI/Linux/t2.efi",
            uki("ID=zz\nIMAGE_VERSION=14\nVERSION_ID=12\n", ""),
        );
        assert_eq!(t.id(), "t2.efi");
        // loader.conf's default wins over the order.
        t.write("efi/loader/loader.conf", "timeout 3\ndefault t1*\n");
        assert_eq!(t.id(), "t1.conf");
    }

    #[test]
    fn loader_conf_default_glob() {
        let t = Tree::new("default");
        t.write("efi/k", bzimage(""));
        // By id, newest first: fedora-6.2, fedora-6.1, a (0x61 > 'D'), Debian-12.
        for name in [
            "fedora-6.1.conf",
            "fedora-6.2.conf",
            "Debian-12.conf",
            "a+3-1.conf",
        ] {
            t.write(&format!("efi/loader/entries/{name}"), "linux /k\n");
        }
        let with = |conf: &str| {
            t.write("efi/loader/loader.conf", conf);
            t.id()
        };
        assert_eq!(with("default fedora-6.1.conf\n"), "fedora-6.1.conf");
        // The first match in the order above.
        assert_eq!(with("default *.conf\n"), "fedora-6.2.conf");
        // Letters match in either case; the last default line counts.
        assert_eq!(
            with("default a*\ndefault DEBIAN-1?.CONF\n"),
            "Debian-12.conf"
        );
        assert_eq!(with("default fedora-6.[!2]*\n"), "fedora-6.1.conf");
        assert_eq!(with("default fedora-6.[0-1].conf\n"), "fedora-6.1.conf");
        // The boot counter is no part of the id.
        assert_eq!(with("default a.conf\n"), "a.conf");
        assert_eq!(with("default a+3-1.conf\n"), "fedora-6.2.conf");
        // No match, @saved, or an empty value: the first entry.
        for conf in ["default nothing*\n", "default @saved\n", "default\n", ""] {
            assert_eq!(with(conf), "fedora-6.2.conf", "{conf:?}");
        }
        // The XBOOTLDR partition's loader.conf is not read.
        fs::remove_file(t.0.join("efi/loader/loader.conf")).unwrap();
        t.write("boot/loader/loader.conf", "default Debian*\n");
        assert_eq!(t.id(), "fedora-6.2.conf");
    }

    #[test]
    fn boot_counting() {
        let t = Tree::new("counting");
        t.write("boot/k", bzimage(""));
        t.write("boot/loader/entries/b+0-3.conf", "linux /k\n");
        t.write("boot/loader/entries/a+1.conf", "linux /k\n");
        // b is newer by id, but has no tries left.
        let e = t.find().unwrap();
        assert_eq!(e.id, "a.conf");
        assert_eq!(e.source, t.0.join("boot/loader/entries/a+1.conf"));
        assert_eq!(
            split_counter("a+2-1.conf"),
            Ok(("a.conf".into(), Some(2), Some(1)))
        );
        assert_eq!(
            split_counter("a+x.conf"),
            Ok(("a+x.conf".into(), None, None))
        );
        assert_eq!(
            split_counter("a+1-.conf"),
            Ok(("a+1-.conf".into(), None, None))
        );
        assert_eq!(split_counter("a+1"), Ok(("a+1".into(), None, None)));
        assert!(split_counter("a+99999999999.conf").is_err());
    }

    #[test]
    fn escaping_paths_are_refused() {
        let t = Tree::new("escape");
        t.write("secret", "host file");
        t.write("boot/k", bzimage(""));
        t.write(
            "boot/loader/entries/a.conf",
            "linux /k\ninitrd /../secret\n",
        );
        t.write("boot/loader/entries/b.conf", "linux ../k\n");
        t.write("boot/loader/entries/c.conf", "linux /k/\n");
        let f = t.find().unwrap_err();
        assert_eq!(f.errno(), ENOENT);
        let text = f.to_string();
        assert!(
            text.contains("boot/loader/entries/a.conf: the 'initrd' path '/../secret' has a '..'"),
            "{text}"
        );
        assert!(
            text.contains("b.conf: the 'linux' path '../k' has a '..'"),
            "{text}"
        );
        assert!(
            text.contains("c.conf: the 'linux' path '/k/' names a directory"),
            "{text}"
        );
    }

    #[test]
    fn the_open_flags_refuse_a_link_and_do_not_wait_for_a_fifo_writer() {
        let t = Tree::new("open-flags");
        t.write("k", bzimage(""));
        symlink(t.0.join("k"), t.0.join("link")).unwrap();
        let open = |name: &str| {
            OpenOptions::new()
                .read(true)
                .custom_flags(OPEN_FLAGS)
                .open(t.0.join(name))
        };
        assert!(open("k").is_ok());
        assert_eq!(open("link").unwrap_err().raw_os_error(), Some(ELOOP));
        let fifo = std::ffi::CString::new(t.0.join("fifo").into_os_string().into_vec()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        // Without O_NONBLOCK this open would wait for a writer forever.
        assert!(open("fifo").is_ok());
    }

    #[test]
    fn symbolic_links_are_not_followed() {
        let t = Tree::new("links");
        t.write("outside/vmlinuz", bzimage(""));
        t.write("boot/k", bzimage(""));
        // A link to a kernel outside the tree, as the chosen entry's kernel: an error.
        symlink(t.0.join("outside/vmlinuz"), t.0.join("boot/link")).unwrap();
        t.write("boot/loader/entries/a.conf", "linux /link\n");
        let f = t.find().unwrap_err();
        assert_eq!(f.errno(), ELOOP, "{f}");
        assert!(f.to_string().contains("is a symbolic link"), "{f}");
        // A linked entry file is passed over.
        fs::remove_file(t.0.join("boot/loader/entries/a.conf")).unwrap();
        t.write("outside/a.conf", "linux /k\n");
        symlink(
            t.0.join("outside/a.conf"),
            t.0.join("boot/loader/entries/a.conf"),
        )
        .unwrap();
        let f = t.find().unwrap_err();
        assert_eq!(f.errno(), ENOENT, "{f}");
        assert!(f.to_string().contains("a.conf' is a symbolic link"), "{f}");
        // So is a linked partition.
        let u = Tree::new("links-partition");
        symlink(t.0.join("boot"), u.0.join("boot")).unwrap();
        let f = u.find().unwrap_err();
        assert_eq!(f.errno(), ENOENT, "{f}");
        assert!(f.to_string().contains("passed over: boot: "), "{f}");
    }

    #[test]
    fn architecture_filter() {
        let t = Tree::new("arch");
        t.write("boot/k", bzimage(""));
        t.write(
            "boot/loader/entries/z-arm.conf",
            "architecture aa64\nlinux /k\n",
        );
        let f = t.find().unwrap_err();
        assert!(f.to_string().contains("for architecture 'aa64'"), "{f}");
        t.write(
            "boot/loader/entries/a-x86.conf",
            "architecture X64\nlinux /k\n",
        );
        assert_eq!(t.id(), "a-x86.conf");
        // A UKI for another machine is passed over too.
        t.write("efi/EFI/Linux/arm.efi", uki_for(0xaa64, "ID=arm\n", ""));
        assert_eq!(t.id(), "a-x86.conf");
    }

    #[test]
    fn unusable_entries_are_passed_over() {
        let t = Tree::new("unusable");
        t.write("boot/k", bzimage(""));
        t.write(
            "boot/loader/entries/no-linux.conf",
            "title x\nuki /EFI/Linux/x.efi\n",
        );
        t.write(
            "boot/loader/entries/big.conf",
            vec![b'#'; MAX_ENTRY_FILE as usize + 1],
        );
        t.write("boot/loader/entries/bad name.conf", "linux /k\n");
        t.write("boot/loader/entries/.hidden.conf", "linux /k\n");
        t.write("boot/loader/entries/other.txt", "linux /k\n");
        t.write("efi/EFI/Linux/not-uki.efi", "MZ but nothing else");
        t.write("efi/EFI/Linux/no-osrel.efi", {
            let mut img = uki("ID=x\n", "");
            img[0x40 + 26..0x40 + 32].copy_from_slice(b".xsrel"); // rename .osrel
            img
        });
        t.write("efi/EFI/Linux/no-name.efi", uki("VERSION_ID=1\n", ""));
        let f = t.find().unwrap_err();
        assert_eq!(f.errno(), ENOENT);
        let text = f.to_string();
        for reason in [
            "no-linux.conf: no 'linux' key",
            "big.conf: larger than 64 KiB",
            "'bad name.conf' is not a valid entry name",
            "not-uki.efi: not a unified kernel image",
            "no-osrel.efi: the UKI has no .osrel section",
            "no-name.efi: its .osrel data has no name",
        ] {
            assert!(text.contains(reason), "{reason}: {text}");
        }
        assert!(
            !text.contains("hidden") && !text.contains("other.txt"),
            "{text}"
        );
    }

    #[test]
    fn no_entries() {
        let t = Tree::new("empty");
        let f = t.find().unwrap_err();
        assert_eq!(f.errno(), ENOENT);
        assert_eq!(
            f.to_string(),
            format!(
                "Failed to find a boot entry in '{}' (Boot Loader Specification entries \
                 loader/entries/*.conf or EFI/Linux/*.efi in 'efi/' or 'boot/')",
                t.0.display()
            )
        );
        // Empty directories are no different.
        fs::create_dir_all(t.0.join("boot/loader/entries")).unwrap();
        fs::create_dir_all(t.0.join("efi/EFI/Linux")).unwrap();
        assert_eq!(t.find().unwrap_err().errno(), ENOENT);
    }

    #[test]
    fn chosen_entry_files_must_be_there() {
        let t = Tree::new("missing");
        t.write("boot/loader/entries/a.conf", "linux /k\ninitrd /i\n");
        let f = t.find().unwrap_err();
        assert_eq!(f.errno(), ENOENT);
        assert!(
            f.to_string().starts_with(&format!(
                "Boot entry 'a.conf': cannot use '{}': No such file or directory",
                t.0.join("boot/k").display()
            )),
            "{f}"
        );
        t.write("boot/k", "not a kernel at all");
        let f = t.find().unwrap_err();
        assert_eq!(f.errno(), ENOEXEC);
        assert!(f.to_string().contains("not a Linux kernel"), "{f}");
        t.write("boot/k", bzimage(""));
        assert!(t.find().unwrap_err().to_string().contains("/i'"));
        fs::create_dir_all(t.0.join("boot/i")).unwrap();
        assert_eq!(t.find().unwrap_err().errno(), EINVAL);
    }

    #[test]
    fn too_many_entries() {
        let t = Tree::new("many");
        for i in 0..=MAX_DIR_ENTRIES {
            t.write(&format!("boot/loader/entries/{i}.txt"), "");
        }
        let f = t.find().unwrap_err();
        assert_eq!(f.errno(), E2BIG);
        assert!(f.to_string().contains("more than 1024 entries"), "{f}");
    }

    #[test]
    fn the_same_file_counts_once() {
        let t = Tree::new("twice");
        t.write("efi/k", bzimage(""));
        t.write("efi/loader/entries/a.conf", "linux /k\n");
        fs::create_dir_all(t.0.join("boot/loader/entries")).unwrap();
        fs::hard_link(
            t.0.join("efi/loader/entries/a.conf"),
            t.0.join("boot/loader/entries/a.conf"),
        )
        .unwrap();
        // The ESP's, found first, is the one.
        assert_eq!(t.find().unwrap().kernel, t.0.join("efi/k"));
    }

    #[test]
    fn entry_lines() {
        let e = parse_type1("linux\tvmlinuz\n  initrd   a b  \nlinux x\noptions\n").unwrap();
        assert_eq!(e.linux, Path::new("x"));
        assert_eq!(e.initrds, [Path::new("a b")]);
        assert_eq!(e.options, None);
        assert_eq!(entry_path("linux", "/./a//b"), Ok(PathBuf::from("a/b")));
        assert!(entry_path("linux", "/").is_err());
        assert!(entry_path("linux", "a/../b").is_err());
    }

    #[test]
    fn os_release() {
        let os = OsRelease::parse(
            "NAME=\"Fedora \\\"Linux\\\"\"\nID=fedora\nVERSION_ID=40\n# PRETTY_NAME=x\nIMAGE_ID=''\n",
        );
        assert_eq!(os.name(), Some("Fedora \"Linux\""));
        assert_eq!(os.version(), Some("40"));
        assert_eq!(os.sort_key(), Some("fedora"));
        let os = OsRelease::parse("IMAGE_ID='img'\nID=x\nBUILD_ID=7\n");
        assert_eq!(os.name(), Some("img"));
        assert_eq!(os.sort_key(), Some("img"));
        assert_eq!(os.version(), Some("7"));
    }

    #[test]
    fn globs() {
        for (pattern, name, matches) in [
            ("*", "", true),
            ("*", "a/b", true),
            ("a*b*c", "aXbYbc", true),
            ("a*b*c", "aXbYbd", false),
            ("?", "", false),
            ("?.conf", "a.conf", true),
            ("[ab]x", "bx", true),
            ("[!ab]x", "bx", false),
            ("[^ab]x", "cx", true),
            ("[]]", "]", true),
            ("[a-c]", "B", true),
            ("[a-]", "-", true),
            ("[", "[", true),
            ("[a", "[a", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("FEDORA*", "fedora-1.conf", true),
            (".hidden*", ".hidden.conf", true),
        ] {
            assert_eq!(glob_match(pattern, name), matches, "{pattern} {name}");
        }
    }
}
