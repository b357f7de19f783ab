//! The EFI variable store of a run: a copy of the firmware's template that the guest writes
//! through the flash device (`--efi-nvram-state=`, `--efi-nvram-template=`).
//!
//! * `auto` keeps it beside the image or directory as `<image>.efinvramstate`, made from the
//!   template the first time and reused afterwards, so the guest's boot entries survive;
//! * a path keeps it there, likewise;
//! * `off` gives the run a private copy in memory (a memfd) that no exit leaves behind.
//!
//! A new store is written to an unnamed file in the target directory and linked into place
//! only when complete, never over an existing file, so a crash or a second rvmspawn never
//! leaves a half-copied or replaced store. An existing store must have the template's size
//! (a store of other firmware would confuse it), and is locked for the run.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, invalid};
use crate::select::check_readable;

/// The suffix vmspawn gives a variable store kept beside its image.
pub const STATE_SUFFIX: &str = ".efinvramstate";

/// OVMF's stores are 128 KiB to 768 KiB (AArch64's are 64 MiB); nothing sane is larger.
pub const MAX_TEMPLATE_SIZE: u64 = 64 << 20;

const TEMPLATE: &str = "EFI variable store template";
const STATE: &str = "EFI variable store";

/// Where the variable store lives (`--efi-nvram-state=`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NvramState {
    /// Beside the image or directory; without either, like [`NvramState::Off`].
    #[default]
    Auto,
    /// A private copy for this run only.
    Off,
    /// This file, made from the template when it does not exist.
    Path(PathBuf),
}

/// The variable store a run uses, open for reading and writing.
#[derive(Debug)]
pub struct VarStore {
    /// The store. Locked (`flock`) for the run when it is a kept file.
    pub file: File,
    /// Its path, `None` for a private copy.
    pub path: Option<PathBuf>,
    /// Its size in bytes, equal to the template's.
    pub len: u64,
}

/// `<image>.efinvramstate` for an image, `<dir>.efinvramstate` beside a directory.
pub fn state_path_beside(image_or_dir: &Path) -> Result<PathBuf, Error> {
    let Some(name) = image_or_dir.file_name() else {
        return Err(invalid(
            STATE,
            image_or_dir,
            "no file name to keep the store beside; use --efi-nvram-state=PATH or off",
        ));
    };
    let mut name = name.to_owned();
    name.push(STATE_SUFFIX);
    Ok(image_or_dir.with_file_name(name))
}

/// Opens the variable store for a run, creating it from `template` when needed (see the
/// module documentation). `image_or_dir` is the `-i` image or the `-D` directory.
pub fn open_state(
    template: &Path,
    mode: &NvramState,
    image_or_dir: Option<&Path>,
) -> Result<VarStore, Error> {
    let mut template_file = check_readable(TEMPLATE, template)?;
    let template_len = template_file
        .metadata()
        .map_err(|source| open_error(TEMPLATE, template, source))?
        .len();
    if template_len == 0 || template_len > MAX_TEMPLATE_SIZE {
        return Err(invalid(
            TEMPLATE,
            template,
            format!("{template_len} bytes, expected 1 to {MAX_TEMPLATE_SIZE}"),
        ));
    }
    let path = match (mode, image_or_dir) {
        (NvramState::Off, _) | (NvramState::Auto, None) => None,
        (NvramState::Auto, Some(beside)) => Some(state_path_beside(beside)?),
        (NvramState::Path(path), _) => Some(path.clone()),
    };
    let Some(path) = path else {
        let file = private_copy(&mut template_file, template_len)?;
        return Ok(VarStore {
            file,
            path: None,
            len: template_len,
        });
    };

    let file = match open_rw(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_from_template(&path, &mut template_file, template_len)?;
            open_rw(&path).map_err(|source| open_error(STATE, &path, source))?
        }
        Err(source) => return Err(open_error(STATE, &path, source)),
    };
    let meta = file
        .metadata()
        .map_err(|source| open_error(STATE, &path, source))?;
    if !meta.is_file() {
        return Err(invalid(STATE, &path, "not a regular file"));
    }
    lock(&file, &path)?;
    if meta.len() != template_len {
        return Err(Error::SizeMismatch {
            state: path,
            state_len: meta.len(),
            template: template.to_owned(),
            template_len,
        });
    }
    Ok(VarStore {
        file,
        path: Some(path),
        len: template_len,
    })
}

fn open_error(what: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Open {
        what,
        path: path.to_owned(),
        source,
    }
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Copies the whole template into `dest`, which must then have exactly its size.
fn copy_template(template: &mut File, len: u64, dest: &mut File) -> io::Result<()> {
    template.seek(SeekFrom::Start(0))?;
    let copied = io::copy(template, dest)?;
    if copied != len {
        return Err(io::Error::other(format!(
            "the template changed while it was copied ({copied} of {len} bytes)"
        )));
    }
    dest.seek(SeekFrom::Start(0))?;
    Ok(())
}

/// An anonymous in-memory copy: gone with the process, however it ends.
fn private_copy(template: &mut File, len: u64) -> Result<File, Error> {
    let create_error = |source| Error::Create {
        path: PathBuf::from("-"),
        source,
    };
    // SAFETY: memfd_create() only reads the NUL-terminated name; the flags are valid.
    let fd = unsafe { libc::memfd_create(c"rvmspawn-efivars".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(create_error(io::Error::last_os_error()));
    }
    // SAFETY: memfd_create() just returned this descriptor, which nothing else owns.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    copy_template(template, len, &mut file).map_err(create_error)?;
    Ok(file)
}

/// Makes `path` a complete copy of the template, without ever replacing an existing file:
/// the copy is written to an unnamed file in the same directory (or a hidden temporary one
/// where `O_TMPFILE` is not supported) and then linked under its name. Losing a race to
/// another rvmspawn that created it first is fine.
fn create_from_template(path: &Path, template: &mut File, len: u64) -> Result<(), Error> {
    let create_error = |source| Error::Create {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let unnamed = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match unnamed {
        Ok(mut file) => {
            copy_template(template, len, &mut file).map_err(create_error)?;
            file.sync_all().map_err(create_error)?;
            ignore_exists(link_unnamed(&file, path)).map_err(create_error)
        }
        // Kernels and file systems without O_TMPFILE.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            create_with_temporary_name(dir, path, template, len).map_err(create_error)
        }
        Err(source) => Err(create_error(source)),
    }
}

/// The same without `O_TMPFILE`: a hidden temporary file, hard-linked under its name and
/// removed, whatever happens.
fn create_with_temporary_name(
    dir: &Path,
    path: &Path,
    template: &mut File,
    len: u64,
) -> io::Result<()> {
    let mut name = std::ffi::OsString::from(".#");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{}", std::process::id()));
    let temp = dir.join(name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        copy_template(template, len, &mut file)?;
        file.sync_all()?;
        ignore_exists(fs::hard_link(&temp, path))
    })();
    let _ = fs::remove_file(&temp);
    result
}

fn ignore_exists(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Gives an `O_TMPFILE` file the name `path` (fails with EEXIST if it exists).
fn link_unnamed(file: &File, path: &Path) -> io::Result<()> {
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let to = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both paths are NUL-terminated and outlive the call; following the /proc link
    // to the open file is what AT_SYMLINK_FOLLOW asks for and needs no capability.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Two VMs writing one store would corrupt it: the second is refused.
fn lock(file: &File, path: &Path) -> Result<(), Error> {
    // SAFETY: flock() on a descriptor we own; no memory is passed.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(Error::Busy {
            path: path.to_owned(),
        });
    }
    Err(open_error(STATE, path, err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::tests::TempDir;
    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;

    const TEMPLATE_LEN: usize = 0x3000;

    fn template(dir: &TempDir) -> PathBuf {
        let path = dir.0.join("VARS.fd");
        let bytes: Vec<u8> = (0..TEMPLATE_LEN).map(|i| (i % 251) as u8).collect();
        fs::write(&path, bytes).unwrap();
        path
    }

    fn contents(file: &mut File) -> Vec<u8> {
        let mut v = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut v).unwrap();
        v
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn auto_is_created_once_and_keeps_what_the_guest_wrote() {
        let dir = TempDir::new("nvram-auto");
        let template = template(&dir);
        let image = dir.0.join("os.raw");
        fs::write(&image, b"disk").unwrap();
        let mut store = open_state(&template, &NvramState::Auto, Some(&image)).unwrap();
        let kept = dir.0.join("os.raw.efinvramstate");
        assert_eq!(store.path.as_deref(), Some(kept.as_path()));
        assert_eq!(store.len, TEMPLATE_LEN as u64);
        assert_eq!(contents(&mut store.file), fs::read(&template).unwrap());
        // No temporary file is left next to it.
        assert_eq!(
            dir_entries(&dir.0),
            ["VARS.fd", "os.raw", "os.raw.efinvramstate"]
        );
        // The guest writes a variable; while the store is in use, a second run is refused.
        store.file.write_all_at(b"BootNext", 0x100).unwrap();
        let err = open_state(&template, &NvramState::Auto, Some(&image)).unwrap_err();
        assert_eq!(err.errno(), libc::EBUSY);
        drop(store);
        // The next run gets the guest's store, not a fresh copy.
        let mut again = open_state(&template, &NvramState::Auto, Some(&image)).unwrap();
        assert_eq!(&contents(&mut again.file)[0x100..0x108], b"BootNext");
        // The file is writable through the handle.
        again.file.write_all(b"x").unwrap();
    }

    #[test]
    fn auto_beside_a_directory_and_explicit_paths() {
        let dir = TempDir::new("nvram-path");
        let template = template(&dir);
        let tree = dir.0.join("tree");
        fs::create_dir(&tree).unwrap();
        let store = open_state(&template, &NvramState::Auto, Some(&tree)).unwrap();
        assert_eq!(store.path.unwrap(), dir.0.join("tree.efinvramstate"));
        let explicit = dir.0.join("my.vars");
        let mode = NvramState::Path(explicit.clone());
        let store = open_state(&template, &mode, Some(&tree)).unwrap();
        assert_eq!(store.path.as_deref(), Some(explicit.as_path()));
        assert_eq!(fs::read(&explicit).unwrap(), fs::read(&template).unwrap());
        // A directory that does not exist is reported with the store's path.
        let mode = NvramState::Path(dir.0.join("missing/vars"));
        let err = open_state(&template, &mode, None).unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT);
        assert!(err.to_string().contains("missing/vars"), "{err}");
        let err = state_path_beside(Path::new("/")).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn off_and_auto_without_image_leave_nothing_behind() {
        let dir = TempDir::new("nvram-off");
        let template = template(&dir);
        let image = dir.0.join("os.raw");
        fs::write(&image, b"disk").unwrap();
        for (mode, beside) in [
            (NvramState::Off, Some(image.as_path())),
            (NvramState::Auto, None),
        ] {
            let mut store = open_state(&template, &mode, beside).unwrap();
            assert_eq!(store.path, None);
            assert_eq!(store.len, TEMPLATE_LEN as u64);
            assert_eq!(contents(&mut store.file), fs::read(&template).unwrap());
            store.file.write_all_at(b"guest", 0).unwrap();
        }
        // The template is untouched and no file was created.
        assert_eq!(fs::read(&template).unwrap()[..5], [0, 1, 2, 3, 4]);
        assert_eq!(dir_entries(&dir.0), ["VARS.fd", "os.raw"]);
    }

    #[test]
    fn a_store_of_another_size_is_refused() {
        let dir = TempDir::new("nvram-size");
        let template = template(&dir);
        let kept = dir.0.join("vars");
        fs::write(&kept, vec![0u8; 0x1000]).unwrap();
        let err = open_state(&template, &NvramState::Path(kept.clone()), None).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        let text = err.to_string();
        assert!(text.contains(&kept.display().to_string()), "{text}");
        assert!(text.contains(&template.display().to_string()), "{text}");
        assert!(text.contains("4096") && text.contains("12288"), "{text}");
        // And not overwritten.
        assert_eq!(fs::read(&kept).unwrap().len(), 0x1000);
    }

    #[test]
    fn creation_without_o_tmpfile_never_replaces() {
        let dir = TempDir::new("nvram-named");
        let template_path = template(&dir);
        let mut template = File::open(&template_path).unwrap();
        let target = dir.0.join("vars");
        let len = TEMPLATE_LEN as u64;
        create_with_temporary_name(&dir.0, &target, &mut template, len).unwrap();
        assert_eq!(
            fs::read(&target).unwrap(),
            fs::read(&template_path).unwrap()
        );
        // A second creation (a lost race) keeps the first file's contents.
        fs::write(&target, b"guest's").unwrap();
        create_with_temporary_name(&dir.0, &target, &mut template, len).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"guest's");
        assert_eq!(dir_entries(&dir.0), ["VARS.fd", "vars"]);
    }

    #[test]
    fn bad_templates() {
        let dir = TempDir::new("nvram-template");
        let missing = dir.0.join("missing.fd");
        let err = open_state(&missing, &NvramState::Off, None).unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT);
        assert!(err.to_string().contains("missing.fd"), "{err}");
        let empty = dir.0.join("empty.fd");
        File::create(&empty).unwrap().flush().unwrap();
        let err = open_state(&empty, &NvramState::Off, None).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        let err = open_state(&dir.0, &NvramState::Off, None).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
    }
}
