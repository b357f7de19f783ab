//! The run's own directory, for the sockets that host programs use to reach the guest (the
//! userspace vsock device's `vsock` and `vsock_PORT`). Its path is predictable from the machine
//! name, so scripts can find it: `$XDG_RUNTIME_DIR/rvmspawn/NAME`, or `/run/rvmspawn/NAME` for
//! root without `$XDG_RUNTIME_DIR`, else `/tmp/rvmspawn-UID/NAME`.
//!
//! While a run holds the directory it keeps an exclusive `flock` on it. A second run with the
//! same name (CI jobs booting the same kernel side by side) gets `NAME-PID` instead of
//! stealing the first one's sockets; a directory left behind by a run that was killed (no
//! lock) is emptied and reused. The directory is removed when the run ends.
//!
//! Under `/tmp` another user could have made the path first, so neither the base directory
//! (`rvmspawn-UID`, `rvmspawn`) nor the machine's directory is taken on trust: each is created
//! with mode 0700, opened with `O_NOFOLLOW|O_DIRECTORY`, and refused unless the opened directory
//! is owned by our effective UID and writable by nobody else. A symbolic link or anything else
//! that is not a directory is refused with `EEXIST` (what `mkdir` reports for a name that is
//! taken), a directory we cannot trust with `EACCES`. From then on everything is done relative to
//! the opened descriptors (`openat`, `unlinkat`), never by path, so the clean-up of a stale
//! directory and the removal at the end stay inside it: a link found in there is removed as a
//! link, never followed. The parent of the base (`/tmp`, `/run`, `$XDG_RUNTIME_DIR`) is trusted.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// The run's directory, removed on drop.
#[derive(Debug)]
pub struct RuntimeDir {
    /// The directory (in the base directory, checked to be ours), opened without following
    /// links; its `flock` marks the run as live.
    dir: Removal,
}

/// A directory of the run's, removed with all in it when this is dropped, and also if
/// rvmspawn ends without dropping it (a panic, a second signal), always through descriptors:
/// the directory's own and its parent's. The directory's descriptor, and a lock on it, is
/// closed only after the directory is gone.
#[derive(Debug)]
struct Removal {
    path: PathBuf,
    parent: OwnedFd,
    /// The directory's name in `parent`.
    name: CString,
    dir: OwnedFd,
    _cleanup: crate::cleanup::Registration,
}

impl Removal {
    fn new(parent: OwnedFd, name: CString, dir: OwnedFd, path: PathBuf) -> Result<Removal, Error> {
        let clone_err = |e: io::Error| err(format!("Failed to open {}", path.display()), &e);
        let (d, b) = (
            dir.try_clone().map_err(clone_err)?,
            parent.try_clone().map_err(clone_err)?,
        );
        let (n, p) = (name.clone(), path.clone());
        let _cleanup = crate::cleanup::register(move || remove(&b, &n, &d, &p));
        Ok(Removal {
            path,
            parent,
            name,
            dir,
            _cleanup,
        })
    }
}

impl Drop for Removal {
    fn drop(&mut self) {
        remove(&self.parent, &self.name, &self.dir, &self.path);
    }
}

/// Empty `dir` (`name` in `parent`, at `path`) and remove it.
fn remove(parent: &OwnedFd, name: &CStr, dir: &OwnedFd, path: &Path) {
    let _ = empty(dir, path);
    let _ = unlinkat(parent, name, libc::AT_REMOVEDIR);
}

/// Where runs keep their directories.
fn base() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| Path::new(d).is_absolute()) {
        return PathBuf::from(d).join("rvmspawn");
    }
    let uid = euid();
    if uid == 0 {
        PathBuf::from("/run/rvmspawn")
    } else {
        PathBuf::from(format!("/tmp/rvmspawn-{uid}"))
    }
}

fn euid() -> libc::uid_t {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn err(what: String, e: &io::Error) -> Error {
    Error::Runtime(
        format!("{what}: {e}"),
        e.raw_os_error().unwrap_or(libc::EIO),
    )
}

/// Flags for opening a directory we are about to trust or work in: never through a link.
const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

fn cstring(name: &OsStr) -> Result<CString, Error> {
    CString::new(name.as_bytes()).map_err(|_| {
        Error::Runtime(
            format!("'{}' cannot name a directory", name.to_string_lossy()),
            libc::EINVAL,
        )
    })
}

fn openat(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the descriptor returned is new and ours.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unlinkat(dir: &OwnedFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; unlinkat only reads it.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `lstat` of `name` in `dir`.
fn stat_at(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` is a valid stat to fill in.
    if unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn stat_fd(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid stat to fill in for a descriptor we own.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The names in directory `dir`, without `.` and `..`.
fn entries(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    // A descriptor of its own for the directory stream (which owns and closes it), with its own
    // position.
    let fd = openat(dir.as_raw_fd(), c".", DIR_FLAGS)?.into_raw_fd();
    // SAFETY: `fd` is an open directory descriptor; on success the stream owns it.
    let stream = unsafe { libc::fdopendir(fd) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `fd` is still ours to close.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        return Err(e);
    }
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; readdir reports errors only through it.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is an open directory stream.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error() == Some(0) {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: readdir returned an entry whose d_name is NUL-terminated, valid until the
        // next readdir; it is copied at once.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    };
    // SAFETY: `stream` is open and not used again; closedir closes `fd` with it.
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}

/// Remove everything in `dir` (at `path`, for messages), relative to the descriptor: links are
/// removed as links, subdirectories are opened without following links and emptied the same way.
fn empty(dir: &OwnedFd, path: &Path) -> Result<(), Error> {
    let names = entries(dir).map_err(|e| err(format!("Failed to read {}", path.display()), &e))?;
    for name in names {
        let p = path.join(OsStr::from_bytes(name.as_bytes()));
        match unlinkat(dir, &name, 0) {
            Ok(()) => continue,
            // Linux's unlink of a directory.
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {}
            Err(e) => return Err(err(format!("Failed to remove stale {}", p.display()), &e)),
        }
        let sub = openat(dir.as_raw_fd(), &name, DIR_FLAGS)
            .map_err(|e| err(format!("Failed to open stale {}", p.display()), &e))?;
        empty(&sub, &p)?;
        unlinkat(dir, &name, libc::AT_REMOVEDIR)
            .map_err(|e| err(format!("Failed to remove stale {}", p.display()), &e))?;
    }
    Ok(())
}

/// Refuse `path` (its name in `parent`) as a run directory: it is not a directory.
fn not_a_directory(parent: RawFd, name: &CStr, path: &Path) -> Error {
    let what = match stat_at(parent, name) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => "a symbolic link",
        _ => "not a directory",
    };
    Error::Runtime(
        format!(
            "Refusing to use {} as the run directory: it is {what}",
            path.display()
        ),
        libc::EEXIST,
    )
}

/// Create directory `name` in `parent` (at `path`) with mode 0700 unless it exists, open it
/// without following links, and check that it is a directory of ours that nobody else can write.
fn own_dir(parent: RawFd, name: &CStr, path: &Path) -> Result<OwnedFd, Error> {
    // SAFETY: `name` is NUL-terminated; mkdirat only reads it.
    let created = unsafe { libc::mkdirat(parent, name.as_ptr(), 0o700) } == 0;
    if !created {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(err(format!("Failed to create {}", path.display()), &e));
        }
    }
    let fd = match openat(parent, name, DIR_FLAGS) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            return Err(not_a_directory(parent, name, path));
        }
        Err(e) => return Err(err(format!("Failed to open {}", path.display()), &e)),
    };
    let st = stat_fd(&fd).map_err(|e| err(format!("Failed to stat {}", path.display()), &e))?;
    let refuse = |why: String| {
        Error::Runtime(
            format!(
                "Refusing to use {} as the run directory: {why}",
                path.display()
            ),
            libc::EACCES,
        )
    };
    if st.st_uid != euid() {
        return Err(refuse(format!(
            "it is owned by UID {}, not by UID {} that runs rvmspawn",
            st.st_uid,
            euid()
        )));
    }
    if st.st_mode & (libc::S_IWGRP | libc::S_IWOTH) != 0 {
        return Err(refuse(format!(
            "it is writable by its group or by others (mode {:04o})",
            st.st_mode & 0o7777
        )));
    }
    if created {
        // The umask could have taken our own bits away.
        // SAFETY: fchmod on a descriptor we own.
        if unsafe { libc::fchmod(fd.as_raw_fd(), 0o700) } < 0 {
            let e = io::Error::last_os_error();
            return Err(err(
                format!("Failed to set the mode of {}", path.display()),
                &e,
            ));
        }
    }
    Ok(fd)
}

impl RuntimeDir {
    /// Create (or take over a stale) directory for machine `name` under the default base.
    pub fn create(name: &str) -> Result<RuntimeDir, Error> {
        Self::create_in(&base(), name)
    }

    /// Create the directory for `name` under `base`: `name`, or `name-PID` while another
    /// run holds `name`. `base`'s parent is trusted; `base` and the directory are checked.
    pub fn create_in(base: &Path, name: &str) -> Result<RuntimeDir, Error> {
        // The machine name is a valid hostname (the front end checks), so it is one plain
        // path component; refuse anything else rather than trust that.
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::Runtime(
                format!("Machine name '{name}' cannot name a directory"),
                libc::EINVAL,
            ));
        }
        let (Some(parent), Some(base_name)) = (base.parent(), base.file_name()) else {
            return Err(Error::Runtime(
                format!("{} cannot hold run directories", base.display()),
                libc::EINVAL,
            ));
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| err(format!("Failed to create {}", parent.display()), &e))?;
        let parent_fd = openat(
            libc::AT_FDCWD,
            &cstring(parent.as_os_str())?,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
        .map_err(|e| err(format!("Failed to open {}", parent.display()), &e))?;
        let base_fd = own_dir(parent_fd.as_raw_fd(), &cstring(base_name)?, base)?;
        if let Some(dir) = Self::take(&base_fd, base, name.into())? {
            return Ok(dir);
        }
        let mine = format!("{name}-{}", std::process::id());
        match Self::take(&base_fd, base, mine)? {
            Some(dir) => Ok(dir),
            None => Err(Error::Runtime(
                format!("{}/{name}-PID is in use by another process", base.display()),
                libc::EBUSY,
            )),
        }
    }

    /// Create, check and lock directory `name` in `base_fd` (at `base`), emptying what a dead
    /// run left there; `None` if a live run holds it.
    fn take(base_fd: &OwnedFd, base: &Path, name: String) -> Result<Option<RuntimeDir>, Error> {
        let path = base.join(&name);
        let name = cstring(OsStr::new(&name))?;
        let dir = own_dir(base_fd.as_raw_fd(), &name, &path)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(err(format!("Failed to lock {}", path.display()), &e));
        }
        empty(&dir, &path)?;
        // An existing directory of ours may have had a wider mode; the sockets are for us only.
        // SAFETY: fchmod on a descriptor we own.
        if unsafe { libc::fchmod(dir.as_raw_fd(), 0o700) } < 0 {
            let e = io::Error::last_os_error();
            return Err(err(
                format!("Failed to set the mode of {}", path.display()),
                &e,
            ));
        }
        let base = base_fd
            .try_clone()
            .map_err(|e| err(format!("Failed to open {}", base.display()), &e))?;
        Ok(Some(RuntimeDir {
            dir: Removal::new(base, name, dir, path)?,
        }))
    }

    /// The run's directory in `slot`, made there by `create` (such as [`RuntimeDir::create`])
    /// the first time, so that a run has one however many users it has.
    pub fn get_or_create(
        slot: &mut Option<RuntimeDir>,
        create: impl FnOnce() -> Result<RuntimeDir, Error>,
    ) -> Result<&RuntimeDir, Error> {
        match slot {
            Some(dir) => Ok(dir),
            None => Ok(slot.insert(create()?)),
        }
    }

    /// The directory. It is ours and mode 0700, so the sockets below it can be made by path.
    pub fn path(&self) -> &Path {
        &self.dir.path
    }
}

/// `-x/--ephemeral` for `--directory=`: a copy of the tree (`cp --archive --reflink=auto`:
/// reflinked where the file system can, copied elsewhere) in a hidden directory beside it,
/// `.#rvmspawn-NAME-XXXXXXXXXXXXXXXX`, which the guest runs from. It is removed at the end of
/// the run, also on an abrupt end short of SIGKILL, through descriptors (as the run directory).
#[derive(Debug)]
pub struct TreeSnapshot {
    dir: Removal,
}

impl TreeSnapshot {
    /// Copy `source` (an absolute directory path) beside itself.
    pub fn create(source: &Path) -> Result<TreeSnapshot, Error> {
        let (Some(parent), Some(base)) = (source.parent(), source.file_name()) else {
            return Err(Error::Runtime(
                format!(
                    "--ephemeral needs a directory with a parent to copy {} into",
                    source.display()
                ),
                libc::EINVAL,
            ));
        };
        let name = format!(
            ".#rvmspawn-{}-{:016x}",
            base.to_string_lossy(),
            crate::random_u64()
        );
        let path = parent.join(&name);
        let mut cp = std::process::Command::new("cp");
        cp.args(["--archive", "--reflink=auto", "--no-target-directory", "--"])
            .arg(source)
            .arg(&path)
            .stdin(std::process::Stdio::null());
        // Termination signals unblocked and a parent-death signal: a Ctrl-C during a long copy
        // ends it (and the run, with the partial copy removed).
        crate::helper::prepare_child(&mut cp, None);
        let status = cp.status();
        let failed = match status {
            Ok(s) if s.success() => None,
            Ok(s) => Some(format!("cp {s}")),
            Err(e) => Some(format!("cp: {e}")),
        };
        if let Some(why) = failed {
            let _ = std::fs::remove_dir_all(&path);
            return Err(Error::Runtime(
                format!(
                    "Failed to copy {} to {} for --ephemeral: {why}",
                    source.display(),
                    path.display()
                ),
                libc::EIO,
            ));
        }
        let open_err = |e: io::Error| err(format!("Failed to open {}", path.display()), &e);
        let parent_fd = openat(
            libc::AT_FDCWD,
            &cstring(parent.as_os_str())?,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
        .map_err(open_err)?;
        let name = cstring(OsStr::new(&name))?;
        let dir = openat(parent_fd.as_raw_fd(), &name, DIR_FLAGS).map_err(open_err)?;
        Ok(TreeSnapshot {
            dir: Removal::new(parent_fd, name, dir, path)?,
        })
    }

    /// The copy.
    pub fn path(&self) -> &Path {
        &self.dir.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    fn base() -> PathBuf {
        let b = std::env::temp_dir().join(format!(
            "rvmspawn-rt-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&b);
        b
    }

    /// A directory outside the base with a file in it, the target of planted links.
    fn victim(b: &Path) -> PathBuf {
        let v = PathBuf::from(format!("{}-victim", b.display()));
        let _ = std::fs::remove_dir_all(&v);
        std::fs::create_dir_all(v.join("vm")).unwrap();
        std::fs::write(v.join("precious"), b"keep").unwrap();
        std::fs::write(v.join("vm/precious"), b"keep").unwrap();
        v
    }

    fn assert_untouched(v: &Path) {
        assert_eq!(std::fs::read(v.join("precious")).unwrap(), b"keep");
        assert_eq!(std::fs::read(v.join("vm/precious")).unwrap(), b"keep");
    }

    fn refusal(b: &Path) -> (String, i32) {
        let e = RuntimeDir::create_in(b, "vm").unwrap_err();
        (e.to_string(), e.errno())
    }

    #[test]
    fn a_second_run_of_a_name_gets_its_own_and_both_go_at_the_end() {
        let b = base();
        let d = RuntimeDir::create_in(&b, "vm").unwrap();
        assert_eq!(d.path(), b.join("vm"));
        std::fs::write(d.path().join("vsock"), b"").unwrap();
        let again = RuntimeDir::create_in(&b, "vm").unwrap();
        assert_eq!(again.path(), b.join(format!("vm-{}", std::process::id())));
        // The first run's files are untouched.
        assert!(d.path().join("vsock").exists());
        // A third one in the same process has nowhere left to go.
        assert_eq!(
            RuntimeDir::create_in(&b, "vm").unwrap_err().errno(),
            libc::EBUSY
        );
        drop(d);
        drop(again);
        assert_eq!(std::fs::read_dir(&b).unwrap().count(), 0);
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn one_directory_per_run_removed_with_what_a_helper_left_in_it() {
        let b = base();
        let mut slot = None;
        let first = RuntimeDir::get_or_create(&mut slot, || RuntimeDir::create_in(&b, "vm"))
            .unwrap()
            .path()
            .to_owned();
        // A second user gets the same directory, not a `vm-PID` beside it.
        let second = RuntimeDir::get_or_create(&mut slot, || RuntimeDir::create_in(&b, "vm"))
            .unwrap()
            .path()
            .to_owned();
        assert_eq!(first, second);
        // What swtpm leaves in an ephemeral state directory goes with the run's directory.
        std::fs::create_dir(first.join("tpm")).unwrap();
        std::fs::write(first.join("tpm/tpm2-00.permall"), b"state").unwrap();
        drop(slot);
        assert_eq!(std::fs::read_dir(&b).unwrap().count(), 0);
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn new_directories_are_private() {
        let b = base();
        let d = RuntimeDir::create_in(&b, "vm").unwrap();
        for p in [&b, &b.join("vm")] {
            let m = std::fs::symlink_metadata(p).unwrap();
            assert!(m.is_dir());
            assert_eq!(m.mode() & 0o7777, 0o700, "{}", p.display());
            assert_eq!(m.uid(), euid());
        }
        drop(d);
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn a_stale_directory_is_emptied_and_reused() {
        let b = base();
        let v = victim(&b);
        std::fs::create_dir_all(b.join("vm/sub/deeper")).unwrap();
        std::fs::write(b.join("vm/vsock_5000"), b"old").unwrap();
        std::fs::write(b.join("vm/sub/deeper/file"), b"old").unwrap();
        // Links planted in the stale directory, at its top and below: removed as links.
        symlink(&v, b.join("vm/link")).unwrap();
        symlink(v.join("vm"), b.join("vm/sub/link")).unwrap();
        symlink(v.join("precious"), b.join("vm/sub/deeper/file-link")).unwrap();
        let d = RuntimeDir::create_in(&b, "vm").unwrap();
        assert_eq!(d.path(), b.join("vm"));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        assert_untouched(&v);
        drop(d);
        assert!(!b.join("vm").exists());
        std::fs::remove_dir_all(&b).unwrap();
        std::fs::remove_dir_all(&v).unwrap();
    }

    #[test]
    fn a_base_or_machine_directory_that_is_a_link_is_refused() {
        let b = base();
        let v = victim(&b);
        // The base itself.
        symlink(&v, &b).unwrap();
        let (msg, errno) = refusal(&b);
        assert_eq!(errno, libc::EEXIST, "{msg}");
        assert!(msg.contains(&format!("{} ", b.display())), "{msg}");
        assert!(msg.contains("is a symbolic link"), "{msg}");
        assert_untouched(&v);
        std::fs::remove_file(&b).unwrap();
        // The machine's directory in a good base.
        std::fs::create_dir(&b).unwrap();
        symlink(v.join("vm"), b.join("vm")).unwrap();
        let (msg, errno) = refusal(&b);
        assert_eq!(errno, libc::EEXIST, "{msg}");
        assert!(
            msg.contains(&format!("{} ", b.join("vm").display())),
            "{msg}"
        );
        assert!(msg.contains("is a symbolic link"), "{msg}");
        assert_untouched(&v);
        // A dangling link is no better.
        std::fs::remove_file(b.join("vm")).unwrap();
        symlink(b.join("nowhere"), b.join("vm")).unwrap();
        assert_eq!(refusal(&b).1, libc::EEXIST);
        assert!(!b.join("nowhere").exists());
        std::fs::remove_dir_all(&b).unwrap();
        std::fs::remove_dir_all(&v).unwrap();
    }

    #[test]
    fn a_base_or_machine_directory_that_is_a_file_is_refused() {
        let b = base();
        std::fs::write(&b, b"").unwrap();
        let (msg, errno) = refusal(&b);
        assert_eq!(errno, libc::EEXIST, "{msg}");
        assert!(msg.contains("is not a directory"), "{msg}");
        std::fs::remove_file(&b).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("vm"), b"data").unwrap();
        let (msg, errno) = refusal(&b);
        assert_eq!(errno, libc::EEXIST, "{msg}");
        assert!(msg.contains("is not a directory"), "{msg}");
        assert_eq!(std::fs::read(b.join("vm")).unwrap(), b"data");
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn directories_others_can_write_are_refused() {
        let b = base();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("keep"), b"").unwrap();
        for mode in [0o770, 0o707, 0o1777] {
            std::fs::set_permissions(&b, std::fs::Permissions::from_mode(mode)).unwrap();
            let (msg, errno) = refusal(&b);
            assert_eq!(errno, libc::EACCES, "{msg}");
            assert!(msg.contains(&format!("{} ", b.display())), "{msg}");
            assert!(msg.contains("writable by its group or by others"), "{msg}");
        }
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(b.join("vm")).unwrap();
        std::fs::write(b.join("vm/keep"), b"").unwrap();
        std::fs::set_permissions(b.join("vm"), std::fs::Permissions::from_mode(0o720)).unwrap();
        let (msg, errno) = refusal(&b);
        assert_eq!(errno, libc::EACCES, "{msg}");
        assert!(
            msg.contains(&format!("{} ", b.join("vm").display())),
            "{msg}"
        );
        // Nothing was cleaned up in a directory that was refused.
        assert!(b.join("keep").exists() && b.join("vm/keep").exists());
        // A base of ours that only we can write (0755, as earlier versions made it) is fine.
        std::fs::set_permissions(b.join("vm"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = RuntimeDir::create_in(&b, "vm").unwrap();
        assert!(b.join("keep").exists());
        drop(d);
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn directories_of_another_user_are_refused() {
        if euid() != 0 {
            eprintln!("note: not root, cannot give a directory to another user; not tested here");
            return;
        }
        let other = 4_000_000 + std::process::id() % 1_000_000;
        let chown = |p: &Path| std::os::unix::fs::chown(p, Some(other), Some(other)).unwrap();
        let b = base();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("keep"), b"").unwrap();
        chown(&b);
        let (msg, errno) = refusal(&b);
        assert_eq!(errno, libc::EACCES, "{msg}");
        assert!(msg.contains(&format!("{} ", b.display())), "{msg}");
        assert!(msg.contains(&format!("owned by UID {other}")), "{msg}");
        std::os::unix::fs::chown(&b, Some(0), Some(0)).unwrap();
        std::fs::create_dir(b.join("vm")).unwrap();
        std::fs::write(b.join("vm/keep"), b"").unwrap();
        chown(&b.join("vm"));
        let (msg, errno) = refusal(&b);
        assert_eq!(errno, libc::EACCES, "{msg}");
        assert!(
            msg.contains(&format!("{} ", b.join("vm").display())),
            "{msg}"
        );
        assert!(b.join("keep").exists() && b.join("vm/keep").exists());
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn names_that_are_not_one_component_are_refused() {
        let b = base();
        for name in ["", ".", "..", "a/b"] {
            assert_eq!(
                RuntimeDir::create_in(&b, name).unwrap_err().errno(),
                libc::EINVAL
            );
        }
    }
}
