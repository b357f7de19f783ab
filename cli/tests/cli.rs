//! Runs the rvmspawn binary and checks what a caller sees: help, exit codes and error
//! lines. None of these needs a VM to run: every case either fails before the VM is set
//! up, or only looks at what is printed before it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rvmspawn");

const EINVAL: i32 = 22;
const ERANGE: i32 = 34;
const ENOENT: i32 = 2;
const ENOTDIR: i32 = 20;
const EOPNOTSUPP: i32 = 95;
const ENXIO: i32 = 6;

/// Every long option of systemd-vmspawn(1) v256, which rvmspawn must all accept, and the
/// newer ones rvmspawn has taken on (`--tpm-state=`, v258).
const MAN_PAGE_OPTIONS: [&str; 26] = [
    "quiet",
    "directory",
    "image",
    "qemu-smp",
    "qemu-mem",
    "qemu-kvm",
    "qemu-vsock",
    "vsock-cid",
    "tpm",
    "tpm-state",
    "linux",
    "initrd",
    "qemu-gui",
    "network-tap",
    "network-user-mode",
    "firmware",
    "secure-boot",
    "machine",
    "private-users",
    "bind",
    "bind-ro",
    "load-credential",
    "set-credential",
    "no-pager",
    "help",
    "version",
];

/// A file that exists for as long as the value lives, to get past the kernel checks.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("rvmspawn-cli-test-{}-{tag}", std::process::id()));
        std::fs::write(&path, b"not a kernel").expect("create temporary file");
        TempFile(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn linux_arg(&self) -> String {
        format!("--linux={}", self.0.display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .output()
        .expect("run rvmspawn")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a failure with `code` reported as one `rvmspawn: ` line mentioning `words`.
fn assert_one_line_error(args: &[&str], code: i32, words: &[&str]) {
    let out = run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(stdout(&out).is_empty(), "{args:?}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("rvmspawn: "), "{args:?}: {err}");
    for word in words {
        assert!(err.contains(word), "{args:?}: '{word}' missing in {err}");
    }
}

#[test]
fn help_lists_every_option_of_the_man_page() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for option in MAN_PAGE_OPTIONS {
        let shown = format!("--{option}");
        let listed = help
            .match_indices(&shown)
            .any(|(at, _)| matches!(help[at + shown.len()..].chars().next(), Some(' ' | '\n')));
        assert!(listed, "--help does not list {shown}:\n{help}");
    }
    for short in ["-q,", "-D,", "-i,", "-n,", "-M,", "-h,"] {
        assert!(help.contains(short), "--help lacks {short}");
    }
    for heading in [
        "Image:",
        "Host Configuration:",
        "System Identity:",
        "User Namespacing:",
        "Mounts:",
        "Credentials:",
    ] {
        assert!(help.contains(heading), "--help lacks {heading}");
    }
    assert_eq!(run(&["-h"]).status.code(), Some(0));
}

#[test]
fn every_option_of_the_man_page_is_accepted() {
    for option in MAN_PAGE_OPTIONS {
        let out = run(&[&format!("--{option}"), "x"]);
        let err = stderr(&out);
        assert!(!err.contains("unexpected argument"), "--{option}: {err}");
        // The parser took it: what follows is rvmspawn's own verdict on the run (nothing to
        // boot, a bad value, a missing file: one `rvmspawn: ` line), or the help or version.
        if matches!(option, "help" | "version") {
            assert_eq!(out.status.code(), Some(0), "--{option}: {err}");
            assert!(!stdout(&out).is_empty(), "--{option}");
        } else {
            assert!(err.starts_with("rvmspawn: "), "--{option}: {err}");
            assert_ne!(out.status.code(), Some(0), "--{option}: {err}");
        }
    }
}

#[test]
fn version() {
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with("rvmspawn "), "{}", stdout(&out));
}

#[test]
fn bad_values_exit_einval_naming_option_and_value() {
    assert_one_line_error(
        &["--qemu-mem=banana", "--linux=/k"],
        EINVAL,
        &["--qemu-mem", "banana"],
    );
    assert_one_line_error(&["--qemu-smp=two"], EINVAL, &["--qemu-smp", "two"]);
    assert_one_line_error(&["--tpm=perhaps"], EINVAL, &["--tpm", "perhaps"]);
    // A state path must be absolute or start with ./ (as vmspawn's).
    assert_one_line_error(
        &["--tpm-state=state", "--linux=/k"],
        EINVAL,
        &["--tpm-state=", "'state'"],
    );
    assert_one_line_error(
        &["--tpm-state=../state", "--linux=/k"],
        EINVAL,
        &["--tpm-state=", "'../state'"],
    );
    assert_one_line_error(&["-M", "no spaces"], EINVAL, &["--machine", "no spaces"]);
    assert_one_line_error(&["--bind=rel"], EINVAL, &["--bind=", "rel"]);
}

#[test]
fn out_of_range_values_exit_erange() {
    assert_one_line_error(&["--vsock-cid=2"], ERANGE, &["--vsock-cid", "'2'"]);
    assert_one_line_error(&["--qemu-mem=1M"], ERANGE, &["--qemu-mem", "1M"]);
    assert_one_line_error(&["--qemu-smp=0"], ERANGE, &["--qemu-smp", "'0'"]);
}

#[test]
fn missing_kernel_exits_with_errno() {
    assert_one_line_error(
        &["--linux=/nonexistent"],
        ENOENT,
        &["'/nonexistent'", "No such file or directory"],
    );
    let kernel = TempFile::new("kernel-for-initrd");
    assert_one_line_error(
        &[&kernel.linux_arg(), "--initrd=/nonexistent.img"],
        ENOENT,
        &["initrd", "'/nonexistent.img'"],
    );
}

#[test]
fn the_graphical_console_without_a_display_exits_enxio_naming_the_variables() {
    let kernel = TempFile::new("kernel-gui");
    let linux = kernel.linux_arg();
    for option in ["--qemu-gui", "--console=gui"] {
        let out = Command::new(BIN)
            .args(["-q", option, &linux])
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .output()
            .expect("run rvmspawn");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(ENXIO), "{option}: {err}");
        assert_eq!(err.lines().count(), 1, "{option}: {err}");
        assert!(
            err.starts_with("rvmspawn: ")
                && err.contains("$WAYLAND_DISPLAY")
                && err.contains("$DISPLAY"),
            "{option}: {err}"
        );
    }
}

/// A directory, removed with everything in it when the value is dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("rvmspawn-cli-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temporary directory");
        TempDir(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("UTF-8 temporary path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn directory_without_kernel_needs_a_boot_entry() {
    assert_one_line_error(
        &["-D", "/nonexistent-dir"],
        ENOENT,
        &["directory", "'/nonexistent-dir'"],
    );
    let tree = TempDir::new("tree-empty");
    assert_one_line_error(
        &["-D", tree.arg()],
        ENOENT,
        &["Failed to find a boot entry in", tree.arg(), "--linux="],
    );
    // The reasons entries were passed over are in the one line.
    let entries = tree.0.join("boot/loader/entries");
    std::fs::create_dir_all(&entries).unwrap();
    std::fs::write(entries.join("a.conf"), "linux /../vmlinuz\n").unwrap();
    assert_one_line_error(
        &["-D", tree.arg()],
        ENOENT,
        &["boot/loader/entries/a.conf: the 'linux' path '/../vmlinuz'"],
    );
    std::fs::write(entries.join("a.conf"), "linux /vmlinuz\n").unwrap();
    assert_one_line_error(
        &["-D", tree.arg()],
        ENOENT,
        &[
            "Boot entry 'a.conf'",
            "vmlinuz",
            "No such file or directory",
        ],
    );
    std::fs::write(tree.0.join("boot/vmlinuz"), "not a kernel").unwrap();
    assert_one_line_error(
        &["-D", tree.arg()],
        8, // ENOEXEC
        &["Boot entry 'a.conf'", "not a Linux kernel"],
    );
}

#[test]
fn directory_without_kernel_boots_its_boot_entry() {
    let tree = TempDir::new("tree-entry");
    let boot = tree.0.join("boot");
    std::fs::create_dir_all(boot.join("loader/entries")).unwrap();
    let mut kernel = vec![0; 0x400];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(boot.join("vmlinuz"), kernel).unwrap();
    std::fs::write(boot.join("loader/entries/a.conf"), "linux /vmlinuz\n").unwrap();
    // The kernel is found: the VM is about to start (it fails later, without KVM or with this
    // kernel, which is none).
    let out = run(&["-D", tree.arg(), "-M", "blsvm", "--qemu-mem=64M"]);
    let err = stderr(&out);
    let first = format!(
        "Spawning VM blsvm on {} with 1 vCPU and 64 MiB.",
        tree.arg()
    );
    assert!(err.contains(&first), "{err}");
}

#[test]
fn shared_directories_must_be_directories() {
    let kernel = TempFile::new("kernel-directory");
    assert_one_line_error(
        &["-D", "/nonexistent-dir", &kernel.linux_arg()],
        ENOENT,
        &["directory", "'/nonexistent-dir'"],
    );
    assert_one_line_error(
        &["-D", "/", "--bind-ro=/dev/null:/x", &kernel.linux_arg()],
        ENOTDIR,
        &["bind mount source", "'/dev/null'", "Not a directory"],
    );
}

#[test]
fn image_must_exist() {
    // Without a kernel the image boots through firmware; it must exist either way.
    assert_one_line_error(
        &["-i", "/srv/os.raw"],
        ENOENT,
        &["disk image", "'/srv/os.raw'"],
    );
    let kernel = TempFile::new("kernel-image");
    assert_one_line_error(
        &["-i", "/nonexistent.raw", &kernel.linux_arg()],
        ENOENT,
        &["disk image", "'/nonexistent.raw'"],
    );
    assert_one_line_error(
        &["-i", "/tmp", &kernel.linux_arg()],
        21, // EISDIR
        &["disk image", "'/tmp'"],
    );
}

#[test]
fn kvm_off_is_refused() {
    let kernel = TempFile::new("kernel-nokvm");
    assert_one_line_error(
        &["--qemu-kvm=no", &kernel.linux_arg()],
        EOPNOTSUPP,
        &["--qemu-kvm=no", "KVM"],
    );
}

#[test]
fn something_to_boot_is_required() {
    assert_one_line_error(&[], EOPNOTSUPP, &["--linux="]);
    assert_one_line_error(&["-M", "vm", "-q"], EOPNOTSUPP, &["--linux="]);
}

#[test]
fn credential_errors_name_the_credential() {
    let kernel = TempFile::new("kernel-cred");
    let linux = kernel.linux_arg();
    assert_one_line_error(
        &["--load-credential=key:/nonexistent/key", &linux],
        ENOENT,
        &["credential 'key'", "/nonexistent/key"],
    );
    assert_one_line_error(
        &["--set-credential=a:1", "--set-credential=a:2", &linux],
        17, // EEXIST
        &["--set-credential=", "'a'"],
    );
    assert_one_line_error(
        &["--set-credential=a/b:1", &linux],
        EINVAL,
        &["--set-credential=", "a/b"],
    );
    assert_one_line_error(
        &["--set-credential=a:\\q", &linux],
        EINVAL,
        &["--set-credential="],
    );
    assert_one_line_error(&["--uuid=nope", &linux], EINVAL, &["--uuid=", "nope"]);
}

#[test]
fn directory_and_image_exclude_each_other() {
    assert_one_line_error(
        &["-D", "/srv/os", "-i", "/srv/os.raw"],
        EINVAL,
        &["--directory=", "--image="],
    );
}

#[test]
fn initrd_needs_linux() {
    let initrd = TempFile::new("initrd-alone");
    let arg = format!("--initrd={}", initrd.path().display());
    assert_one_line_error(&[&arg], EINVAL, &["--initrd=", "--linux="]);
}

#[test]
fn usage_errors_exit_einval_with_clap_message() {
    for args in [&["--no-such-option"][..], &["--qemu-mem"], &["-Z"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(EINVAL), "{args:?}");
        assert!(
            stderr(&out).contains("error:"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn status_lines_unless_quiet() {
    let kernel = TempFile::new("kernel-status");
    let linux = kernel.linux_arg();
    let common = ["-M", "statusvm", "--qemu-mem=64M", &linux];
    let out = run(&common);
    let err = stderr(&out);
    let first = format!(
        "Spawning VM statusvm on {} with 1 vCPU and 64 MiB.",
        kernel.path().display()
    );
    assert!(err.contains(&first), "{err}");
    assert!(err.contains("Press Ctrl-] three times within 1s to kill VM."));

    let not_a_kernel = format!(
        "rvmspawn: '{}' is not a Linux kernel (neither a bzImage nor an ELF vmlinux)",
        kernel.path().display()
    );
    assert!(err.contains(&not_a_kernel), "{err}");

    let mut quiet = common.to_vec();
    quiet.insert(0, "-q");
    let out_quiet = run(&quiet);
    let err = stderr(&out_quiet);
    assert!(!err.contains("Spawning VM"), "{err}");
    assert!(!err.contains("Press Ctrl-]"), "{err}");
    // Quiet, not idle: the run got as far as loading the kernel, and says so as before.
    assert!(err.contains(&not_a_kernel), "{err}");
    assert_eq!(out.status.code(), Some(libc::ENOEXEC));
    assert_eq!(out_quiet.status.code(), Some(libc::ENOEXEC));
}

/// Runs rvmspawn through sh so that $LISTEN_PID can be the pid rvmspawn will have
/// (exec keeps it) and the passed fds are set up by redirections.
fn run_with_fds(names: &str, redirections: &str, args: &[&str]) -> Output {
    let script = format!(
        "LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={names} exec \"$@\" {redirections}",
        names.split(':').count()
    );
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(BIN)
        .args(args)
        .output()
        .expect("run rvmspawn through sh")
}

#[test]
fn unknown_passed_fds_are_closed_with_a_notice() {
    let kernel = TempFile::new("kernel-fds");
    let out = run_with_fds(
        "kvm:foo:vhost-vsock",
        "3</dev/null 4</dev/null 5</dev/null",
        &["-q", "--qemu-mem=64M", &kernel.linux_arg()],
    );
    let err = stderr(&out);
    assert!(
        err.contains("Couldn't recognize passed fd 4 (foo), closing fd and ignoring..."),
        "{err}"
    );
    assert!(!err.contains("fd 3"), "{err}");
    assert!(!err.contains("fd 5"), "{err}");
}

#[test]
fn passed_fds_that_are_not_open_are_an_error() {
    let kernel = TempFile::new("kernel-badfd");
    let out = run_with_fds("kvm:foo", "3</dev/null 4<&-", &[&kernel.linux_arg()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(
        err.contains("Failed to get passed file descriptors"),
        "{err}"
    );
}

#[test]
fn tpm_state_with_tpm_no_is_not_silently_ignored() {
    // The run ends at the kernel check (the file is not a kernel); the notice comes first.
    let kernel = TempFile::new("tpm-state-no");
    let linux = kernel.linux_arg();
    let out = run(&[&linux, "--tpm=no", "--tpm-state=off"]);
    assert!(
        stderr(&out).contains("--tpm-state= has no effect with --tpm=no"),
        "{}",
        stderr(&out)
    );
    // Neither with the default state, nor with a TPM to keep it for.
    for args in [
        ["--tpm=no", "--qemu-vsock=no"],
        ["--tpm=yes", "--tpm-state=off"],
    ] {
        let out = run(&[&linux, args[0], args[1]]);
        assert!(!stderr(&out).contains("has no effect"), "{}", stderr(&out));
    }
}
