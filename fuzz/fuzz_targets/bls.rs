//! Boot Loader Specification discovery (`-D` without `--linux=`) on a tree built from the
//! input. The tree is the guest's own root file system, writable by the guest over virtio-fs,
//! so everything in it is hostile: entry file names, `.conf` contents, `loader.conf`.
//!
//! The input is split at 0xFF bytes: the first part is `efi/loader/loader.conf`, then pairs of
//! (file name, contents) for `boot/loader/entries/`, at most eight. A name whose first byte is
//! odd gets `.conf` appended, so most entries are read. `boot/k` is a minimal bzImage header
//! and `boot/i` an initrd, so entries naming them can be chosen and the success path runs;
//! what is chosen must lie inside `boot/`.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use boot::bls::find_boot_entry;
use libfuzzer_sys::fuzz_target;

fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("rvmspawn-fuzz-bls-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let root = root();
    let _ = std::fs::remove_dir_all(root);
    let entries = root.join("boot/loader/entries");
    std::fs::create_dir_all(&entries).expect("entries dir");
    std::fs::create_dir_all(root.join("efi/loader")).expect("loader dir");
    let mut kernel = vec![0u8; 0x400];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(root.join("boot/k"), kernel).expect("kernel");
    std::fs::write(root.join("boot/i"), b"initrd").expect("initrd");

    let mut parts = data.split(|b| *b == 0xff);
    if let Some(loader) = parts.next() {
        std::fs::write(root.join("efi/loader/loader.conf"), loader).expect("loader.conf");
    }
    for _ in 0..8 {
        let (Some(name), Some(contents)) = (parts.next(), parts.next()) else {
            break;
        };
        let Some(name) = file_name(name) else {
            continue;
        };
        let _ = std::fs::write(entries.join(name), contents);
    }
    if let Ok(entry) = find_boot_entry(root) {
        // Whatever was chosen lies inside the partition it came from, never outside the tree.
        let boot = root.join("boot");
        let inside = |p: &std::path::Path| {
            p.starts_with(&boot)
                && p.components()
                    .all(|c| !matches!(c, std::path::Component::ParentDir))
        };
        assert!(inside(&entry.kernel), "{}", entry.kernel.display());
        assert!(
            entry.initrds.iter().all(|i| inside(i)),
            "{:?}",
            entry.initrds
        );
        assert_eq!(entry.initrds.len(), entry.initrd_files.len());
    }
});

/// A usable file name from fuzz bytes: no `/`, no NUL, not `.` or `..`, at most 200 bytes.
fn file_name(raw: &[u8]) -> Option<std::ffi::OsString> {
    use std::os::unix::ffi::OsStrExt;
    let (&first, rest) = raw.split_first()?;
    let mut name: Vec<u8> = rest
        .iter()
        .copied()
        .filter(|b| *b != b'/' && *b != 0)
        .take(200)
        .collect();
    if first & 1 == 1 {
        name.extend_from_slice(b".conf");
    }
    if name.is_empty() || name == b"." || name == b".." {
        return None;
    }
    Some(std::ffi::OsStr::from_bytes(&name).to_os_string())
}
