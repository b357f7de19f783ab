//! The firmware options as a caller sees them: listings, descriptions and errors, each against
//! a descriptor directory the test builds and names in `$RVMSPAWN_FIRMWARE_DIRS`. No case
//! starts a VM: each either prints and exits, or fails before KVM is opened.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rvmspawn");

const ENOENT: i32 = 2;
const EINVAL: i32 = 22;
const EOPNOTSUPP: i32 = 95;

/// A directory, removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "rvmspawn-firmware-test-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temporary directory");
        TempDir(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether this machine's `/dev/kvm` emulates SMM (`KVM_CAP_X86_SMM`), which decides whether
/// the Secure Boot descriptors are usable. This project's build machines' `/dev/kvm` does not;
/// where it does, the tests below check the other side.
fn host_kvm_has_smm() -> bool {
    use std::os::fd::AsRawFd;
    let Ok(kvm) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    else {
        // rvmspawn counts an unopenable /dev/kvm as able (the run then fails opening it).
        return true;
    };
    // SAFETY: KVM_CHECK_EXTENSION (0xae03) takes an integer and touches no memory.
    unsafe { libc::ioctl(kvm.as_raw_fd(), 0xae03, 117 as libc::c_ulong) > 0 }
}

/// A descriptor for x86_64 q35 split raw flash.
fn descriptor(code: &Path, vars: &Path, arch: &str, features: &[&str]) -> String {
    format!(
        r#"{{
    "description": "test firmware",
    "interface-types": ["uefi"],
    "mapping": {{
        "device": "flash",
        "executable": {{"filename": "{}", "format": "raw"}},
        "nvram-template": {{"filename": "{}", "format": "raw"}}
    }},
    "targets": [{{"architecture": "{arch}", "machines": ["pc-i440fx-*", "pc-q35-*"]}}],
    "features": [{}],
    "tags": []
}}
"#,
        code.display(),
        vars.display(),
        features
            .iter()
            .map(|f| format!("\"{f}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Two descriptor directories (a high-priority `etc` and `usr`) laid out like Debian's, with
/// a masked name, an override, another architecture, a malformed file, enrolled keys and SMM;
/// the firmware files of the usable one exist, a disk image too.
struct Fixture {
    root: TempDir,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let root = TempDir::new(tag);
        let (etc, usr) = (root.join("etc"), root.join("usr"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&usr).unwrap();
        let code = root.join("OVMF_CODE.fd");
        let vars = root.join("OVMF_VARS.fd");
        std::fs::write(&code, b"code").unwrap();
        std::fs::write(&vars, vec![0u8; 4096]).unwrap();
        std::fs::write(root.join("os.raw"), vec![0u8; 4096]).unwrap();
        let write =
            |dir: &Path, name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        let other = |name: &str| root.join(name);
        write(
            &usr,
            "10-masked.json",
            &descriptor(&other("masked.fd"), &vars, "x86_64", &[]),
        );
        write(&etc, "10-masked.json", "");
        write(
            &usr,
            "20-ia32.json",
            &descriptor(&other("ia32.fd"), &vars, "i386", &[]),
        );
        write(&usr, "30-broken.json", "{\"description\": ");
        write(
            &usr,
            "40-edk2-x86_64-secure-enrolled.json",
            &descriptor(
                &other("ms.fd"),
                &vars,
                "x86_64",
                &["enrolled-keys", "requires-smm", "secure-boot"],
            ),
        );
        write(
            &usr,
            "50-edk2-x86_64-secure.json",
            &descriptor(
                &other("secboot.fd"),
                &vars,
                "x86_64",
                &["requires-smm", "secure-boot"],
            ),
        );
        write(
            &usr,
            "60-edk2-x86_64.json",
            &descriptor(&code, &vars, "x86_64", &["acpi-s3"]),
        );
        write(
            &usr,
            "70-override.json",
            &descriptor(&other("usr.fd"), &vars, "x86_64", &[]),
        );
        write(
            &etc,
            "70-override.json",
            &descriptor(&other("missing-CODE.fd"), &vars, "x86_64", &["etc-only"]),
        );
        Fixture { root }
    }

    fn dirs(&self) -> String {
        format!(
            "{}:{}",
            self.root.join("etc").display(),
            self.root.join("usr").display()
        )
    }

    fn image(&self) -> String {
        self.root.join("os.raw").display().to_string()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[])
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("RVMSPAWN_FIRMWARE_DIRS", self.dirs())
            .env_remove("SYSTEMD_LOG_LEVEL")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES");
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().expect("run rvmspawn")
    }

    /// Asserts a failure with `code` reported as one `rvmspawn: ` line mentioning `words`.
    fn assert_error(&self, args: &[&str], code: i32, words: &[&str]) {
        let out = self.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("rvmspawn: "), "{args:?}: {err}");
        for word in words {
            assert!(err.contains(word), "{args:?}: '{word}' missing in {err}");
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn list_prints_descriptors_in_selection_order() {
    let f = Fixture::new("list");
    let out = f.run(&["--firmware=list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let usr = |n: &str| f.root.join("usr").join(n).display().to_string();
    let etc = |n: &str| f.root.join("etc").join(n).display().to_string();
    let expected = [
        usr("20-ia32.json"),
        usr("30-broken.json"),
        usr("40-edk2-x86_64-secure-enrolled.json"),
        usr("50-edk2-x86_64-secure.json"),
        usr("60-edk2-x86_64.json"),
        etc("70-override.json"),
    ];
    assert_eq!(stdout(&out), expected.map(|p| p + "\n").concat());
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn feature_list_is_sorted_and_unique() {
    let f = Fixture::new("features");
    let out = f.run(&["--firmware-features=list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "acpi-s3\nenrolled-keys\netc-only\nrequires-smm\nsecure-boot\n"
    );
}

#[test]
fn describe_prints_the_chosen_descriptor() {
    let f = Fixture::new("describe");
    let out = f.run(&["--firmware=describe"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let smm = host_kvm_has_smm();
    // With SMM vmspawn's choice, 50; without, the next one vmspawn would skip to: 60,
    // pretty-printed in its order.
    let name = if smm {
        "usr/50-edk2-x86_64-secure.json"
    } else {
        "usr/60-edk2-x86_64.json"
    };
    let chosen = std::fs::read_to_string(f.root.join(name)).unwrap();
    let normalise = |s: &str| s.split_whitespace().collect::<String>();
    assert_eq!(normalise(&stdout(&out)), normalise(&chosen));
    assert!(
        stdout(&out).starts_with("{\n  \"description\""),
        "{}",
        stdout(&out)
    );
    // Where vmspawn's choice differs, stderr says so.
    let err = stderr(&out);
    if !smm {
        assert!(err.contains("50-edk2-x86_64-secure.json"), "{err}");
        assert!(err.contains("SMM"), "{err}");
    }
}

#[test]
fn debug_level_names_every_skipped_descriptor() {
    let f = Fixture::new("debug");
    let out = f.run_with(&["--firmware=describe"], &[("SYSTEMD_LOG_LEVEL", "debug")]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    for (name, why) in [
        ("20-ia32.json", "not for x86_64"),
        ("30-broken.json", "malformed"),
        ("40-edk2-x86_64-secure-enrolled.json", "'enrolled-keys'"),
        ("50-edk2-x86_64-secure.json", "requires SMM"),
    ]
    .into_iter()
    // With SMM, 50 is the one selected, not skipped.
    .filter(|(name, _)| !(host_kvm_has_smm() && name.starts_with("50-")))
    {
        let line = err
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} not mentioned: {err}"));
        assert!(line.starts_with("Skipping firmware definition"), "{line}");
        assert!(line.contains(why), "{line}");
    }
    assert!(err.contains("Selected firmware definition"), "{err}");
    // Not without debug; the same descriptor is chosen and described all the same.
    let plain = f.run(&["--firmware=describe"]);
    let err = stderr(&plain);
    assert!(!err.contains("Skipping"), "{err}");
    assert_eq!(plain.status.code(), Some(0), "{err}");
    assert_eq!(stdout(&plain), stdout(&out));
    assert!(
        stdout(&plain).contains("\"description\""),
        "{}",
        stdout(&plain)
    );
}

#[test]
fn secure_boot_and_bios_are_refused() {
    let f = Fixture::new("refused");
    let image = f.image();
    let smm = host_kvm_has_smm();
    if !smm {
        // vmspawn's message, and why.
        f.assert_error(
            &["-i", &image, "--secure-boot=yes"],
            EOPNOTSUPP,
            &[
                "Secure Boot requested, but selected OVMF firmware doesn't support it.",
                "SMM",
                "KVM_CAP_X86_SMM",
            ],
        );
        f.assert_error(
            &["-i", &image, "--firmware-features=secure-boot"],
            EOPNOTSUPP,
            &["Secure Boot requested", "SMM"],
        );
        f.assert_error(
            &["--firmware=describe", "--secure-boot=yes"],
            EOPNOTSUPP,
            &["Secure Boot requested", "SMM"],
        );
    } else {
        let out = f.run(&["--firmware=describe", "--secure-boot=yes"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains("secboot"), "{}", stdout(&out));
    }
    f.assert_error(
        &["-i", &image, "--firmware=bios"],
        EOPNOTSUPP,
        &["--firmware=bios", "not supported"],
    );
    if !smm {
        let explicit = format!(
            "--firmware={}",
            f.root.join("usr/50-edk2-x86_64-secure.json").display()
        );
        f.assert_error(
            &["-i", &image, &explicit],
            EOPNOTSUPP,
            &["50-edk2-x86_64-secure.json", "SMM"],
        );
    }
    f.assert_error(
        &["-i", &image, "--firmware=none"],
        EINVAL,
        &["--firmware=none requires --linux="],
    );
}

#[test]
fn bad_values_exit_einval_naming_the_option() {
    let f = Fixture::new("values");
    let image = f.image();
    for (arg, option) in [
        ("--firmware=ovmf.json", "--firmware="),
        ("--firmware=UEFI", "--firmware="),
        ("--secure-boot=maybe", "--secure-boot="),
        ("--efi-nvram-template=vars.fd", "--efi-nvram-template="),
        ("--efi-nvram-state=vm.vars", "--efi-nvram-state="),
    ] {
        let value = arg.split_once('=').unwrap().1;
        f.assert_error(
            &["-i", &image, arg],
            EINVAL,
            &[option, &format!("'{value}'")],
        );
    }
}

#[test]
fn missing_firmware_files_are_named_before_the_vm_exists() {
    let f = Fixture::new("missing");
    let image = f.image();
    // The etc override names a code file that does not exist.
    f.assert_error(
        &["-i", &image, "--firmware-features=etc-only"],
        ENOENT,
        &[
            "firmware code",
            &f.root.join("missing-CODE.fd").display().to_string(),
            "No such file or directory",
        ],
    );
    // Nothing was created beside the image.
    assert!(!f.root.join("os.raw.efinvramstate").exists());
    // An explicit descriptor that does not exist.
    let missing = format!("--firmware={}", f.root.join("nope.json").display());
    f.assert_error(&["-i", &image, &missing], ENOENT, &["nope.json"]);
    // A template override that does not exist.
    let template = format!(
        "--efi-nvram-template={}",
        f.root.join("NO_VARS.fd").display()
    );
    f.assert_error(&["-i", &image, &template], ENOENT, &["NO_VARS.fd"]);
    // No usable descriptor at all: ENOENT with the reasons.
    f.assert_error(
        &["-i", &image, "--firmware-features=nothing-has-this"],
        ENOENT,
        &[
            "Failed to find a usable UEFI firmware descriptor",
            "lacks required feature 'nothing-has-this'",
        ],
    );
}

#[test]
fn empty_search_path_lists_nothing() {
    let f = Fixture::new("empty");
    let out = Command::new(BIN)
        .args(["--firmware=list"])
        .env("RVMSPAWN_FIRMWARE_DIRS", f.root.join("none").as_os_str())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    // The same command on the fixture's directories does list them.
    let listed = f.run(&["--firmware=list"]);
    assert_eq!(listed.status.code(), Some(0));
    assert!(
        stdout(&listed).contains("60-edk2-x86_64.json\n"),
        "{}",
        stdout(&listed)
    );
}

#[test]
fn nvram_options_on_a_direct_boot_are_not_silently_ignored() {
    let f = Fixture::new("nvram-direct");
    let kernel = f.root.join("not-a-kernel");
    std::fs::write(&kernel, b"x").unwrap();
    let linux = format!("--linux={}", kernel.display());
    let out = f.run(&[&linux, "--efi-nvram-state=off", "--qemu-vsock=no"]);
    assert!(
        stderr(&out).contains("apply to firmware boots only"),
        "{}",
        stderr(&out)
    );
    let out = f.run(&[&linux, "--firmware-features=~acpi-s3", "--qemu-vsock=no"]);
    assert!(
        stderr(&out).contains("apply to firmware boots only"),
        "{}",
        stderr(&out)
    );
    // Without them, no such notice, and the run goes on as far as the kernel.
    let out = f.run(&[&linux, "--qemu-vsock=no"]);
    assert!(
        !stderr(&out).contains("apply to firmware boots only"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("is not a Linux kernel"),
        "{}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(libc::ENOEXEC), "{}", stderr(&out));
}
