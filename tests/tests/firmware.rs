//! Booting through UEFI firmware: Debian's stock OVMF, checked from inside the guest. The test
//! host's KVM has SMM, so every boot here uses vmspawn's default choice, the Secure Boot build
//! (`OVMF_CODE_4M.secboot.fd` + `OVMF_VARS_4M.fd`, from `50-edk2-x86_64-secure.json`: SMM,
//! a variable store only SMM can program), in setup mode unless a step enrolls keys.
//!
//! The guest's /init prints what the firmware and the boot loader left behind
//! (`rvmspawn.efi=1`: `/sys/firmware/efi`, systemd's loader variables through efivarfs) and
//! keeps a test variable across boots (`rvmspawn.efivar-persist=`); see
//! `scripts/initramfs/guest-init`. The images are built by `scripts/assets.sh`
//! (`.cache/assets/firmware/`): `esp.raw`, a GPT disk whose ESP holds systemd-boot and a
//! Type #1 entry for the guest kernel and initramfs; `esp-nvram.raw`, the same defaulting to the
//! EFI-variable entry; `uki.efi`, systemd-stub with the same kernel and initramfs. Every boot
//! uses a copy, never the cached image. The same assets were checked with QEMU q35 and the same
//! OVMF (`scripts/firmware-check-qemu.sh`): the strings asserted here are what the guest prints
//! there.
//!
//! One batch, one test-host start. OVMF in the nested test host takes about 50-70 s per boot
//! and the batch boots nine times, so it gets 25 minutes. Stock QEMU 7.2 as the test host
//! aborts in about 40% of nested OVMF boots: in the test host these tests need the patched
//! outer QEMU (`scripts/testhost-qemu/build.sh`, which `scripts/test.sh` runs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rvmspawn_tests::{Batch, Mode, Results, assets, mode, oem_strings, repo_root, rvmspawn_bin};

/// One firmware boot: about 30 s in the test host, several times that allowed for load.
const T1: &str = "timeout -s KILL 200";
/// A run with a guest reboot in it: two firmware boots. Bounded, because a broken variable
/// store makes the persist action reboot for ever (it reboots until it finds its variable):
/// all steps timing out still end inside the batch timeout.
const T2: &str = "timeout -s KILL 260";

/// `loader/entries/test.conf`'s options (scripts/assets.sh, FW_TEST_OPTIONS).
const TEST_OPTIONS: &str =
    "console=ttyS0 rvmspawn.efi=1 rvmspawn.smbios=1 rvmspawn.notify=42 rvmspawn.entry=test";
/// What systemd-boot 252 puts before an entry's options: `initrd=` with the entry's `initrd`
/// path in backslashes (seen with QEMU and the same OVMF).
const SD_BOOT_INITRD_ARG: &str = "initrd=\\initramfs.cpio.gz";
/// The UKI's `.cmdline` (FW_UKI_CMDLINE).
const UKI_CMDLINE: &str = "console=ttyS0 rvmspawn.efi=1 rvmspawn.smbios=1 rvmspawn.entry=uki";
/// The PARTUUID of the ESP in both images (FW_ESP_PARTUUID); systemd-boot reports it upper case.
const ESP_PARTUUID: &str = "7A3E1C54-9B2D-4F60-8E15-3C9D0B6A2F71";
/// The flash byte the guest tries to program from outside SMM (`rvmspawn.flash-poke=0xffc3f000`
/// in `sb/uki-enroll.efi`'s command line, scripts/assets.sh FW_SB_ENROLL_CMDLINE): near the end
/// of the 256 KiB variable store of `OVMF_VARS_4M.fd` (at 0xFFC00000), free space (0xFF) in the
/// template. Its offset in the state file:
const FLASH_POKE_OFFSET: u32 = 0x3_f000;

/// What `esp-nvram.raw`'s entry writes (`rvmspawn.efivar-persist=kept-across-boots`).
const NVRAM_VALUE: &str = "kept-across-boots";

fn firmware_assets() -> PathBuf {
    assets().join("firmware")
}

fn results() -> &'static Results {
    static RESULTS: OnceLock<Results> = OnceLock::new();
    RESULTS.get_or_init(|| {
        preflight();
        let fw = firmware_assets();
        let fw = fw.display();
        Batch::new()
            .timeout_secs(1800)
            .step(
                // -i alone: OVMF finds systemd-boot on the ESP, which boots test.conf. The
                // entry's rvmspawn.notify=42 makes the guest send EXIT_STATUS=42 over vsock.
                "esp",
                format!(
                    r#"D=$(mktemp -d)
cp --sparse=always '{fw}/esp.raw' "$D/esp.raw" || exit 99
{T1} "$RVMSPAWN" -q -i "$D/esp.raw" --set-credential=fwtest:hello --set-credential=fwlong:{LONG_VALUE} -s io.systemd.credential:x=y rvmspawn.extra=1
rc=$?
rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // The UKI through the firmware (fw_cfg, as QEMU's -kernel), no disk.
                // Also 2 vCPUs (the firmware starts the AP) and 2.75 GiB, where the Q35 layout
                // splits RAM at 2 GiB and puts the rest above 4 GiB.
                "uki",
                format!(
                    r#"{T1} "$RVMSPAWN" -q --linux='{fw}/uki.efi' --firmware=uefi --qemu-smp=2 --qemu-mem=2816M"#
                ),
            )
            .step(
                // auto: the store lives beside the image. Run 1: the guest finds no variable,
                // writes it and reboots; the next boot reads it and powers off. Run 2 reads it
                // at once.
                "nvram-auto",
                format!(
                    r#"D=$(mktemp -d)
cp --sparse=always '{fw}/esp-nvram.raw' "$D/img.raw" || exit 99
{T2} "$RVMSPAWN" -q -i "$D/img.raw" --efi-nvram-state=auto >"$D/run1" 2>&1
echo "RUN1-RC=$?"
echo "STATE-AFTER-RUN1=$(test -f "$D/img.raw.efinvramstate" && echo yes || echo no)"
{T2} "$RVMSPAWN" -q -i "$D/img.raw" --efi-nvram-state=auto >"$D/run2" 2>&1
echo "RUN2-RC=$?"
{STATE_REPORT}
sed 's/^/RUN1: /' "$D/run1"
sed 's/^/RUN2: /' "$D/run2"
rm -rf "$D""#
                ),
            )
            .step(
                // The default choice where KVM has SMM (the test host's does) is vmspawn's:
                // the Secure Boot build; --secure-boot=no gets the plain one. No VM.
                "describe",
                r#"D=$(mktemp -d)
code() { XDG_CONFIG_HOME="$D" "$RVMSPAWN" --firmware=describe "$@" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["mapping"]["executable"]["filename"])'; }
echo "DEFAULT-CODE=$(code)"
echo "NO-SB-CODE=$(code --secure-boot=no)"
echo "ENROLLED-CODE=$(code --secure-boot=yes --firmware-features=enrolled-keys)"
rm -rf "$D""#
                    .to_owned(),
            )
            .step(
                // Secure Boot with keys the guest enrolls. Run 1: the Secure Boot firmware
                // starts in setup mode (no PK), so an unsigned UKI boots; the guest enrolls
                // db, KEK and PK from credentials (authenticated variables, written through
                // SMM into the state file) and, from outside SMM, tries to program a byte of
                // the variable store's flash. Run 2 (a restart on the same store): the UKI
                // signed with the enrolled db key boots with Secure Boot enforced. Run 3: the
                // unsigned UKI is refused, and rvmspawn ends when the firmware gives up.
                "secure-boot",
                format!(
                    r#"D=$(mktemp -d)
SB='{fw}/sb'
SBARGS="--firmware=uefi --secure-boot=yes --efi-nvram-state=$D/sb.vars"
{T1} "$RVMSPAWN" -q --linux="$SB/uki-enroll.efi" $SBARGS --load-credential=sb.db:$SB/db.auth \
    --load-credential=sb.KEK:$SB/KEK.auth --load-credential=sb.PK:$SB/PK.auth >"$D/run1" 2>&1
echo "RUN1-RC=$?"
echo "STATE-POKED-BYTE=$(od -An -tx1 -j {FLASH_POKE_OFFSET} -N1 "$D/sb.vars" | tr -d ' ')"
{T1} "$RVMSPAWN" -q --linux="$SB/uki-signed.efi" $SBARGS >"$D/run2" 2>&1
echo "RUN2-RC=$?"
t0=$(date +%s)
{T1} "$RVMSPAWN" -q --linux='{fw}/uki.efi' $SBARGS </dev/null >"$D/run3" 2>&1
echo "RUN3-RC=$?"
echo "RUN3-SECS=$(($(date +%s) - t0))"
sed 's/^/RUN1: /' "$D/run1"
sed 's/^/RUN2: /' "$D/run2"
sed 's/^/RUN3: /' "$D/run3"
rm -rf "$D""#
                ),
            )
            .step(
                // off: a private copy for the run only. A guest reboot keeps the variable
                // (same run), a second run starts from the template again.
                "nvram-off",
                format!(
                    r#"D=$(mktemp -d)
cp --sparse=always '{fw}/esp-nvram.raw' "$D/img.raw" || exit 99
{T2} "$RVMSPAWN" -q -i "$D/img.raw" --efi-nvram-state=off >"$D/run1" 2>&1
echo "RUN1-RC=$?"
{T2} "$RVMSPAWN" -q -i "$D/img.raw" --efi-nvram-state=off >"$D/run2" 2>&1
echo "RUN2-RC=$?"
echo "FILES=$(cd "$D" && ls -A | grep -v '^run[12]$' | tr '\n' ' ')"
sed 's/^/RUN1: /' "$D/run1"
sed 's/^/RUN2: /' "$D/run2"
rm -rf "$D""#
                ),
            )
            .run()
    })
}

/// Shell that reports the `auto` state file: whether it exists, and whether the test variable's
/// UTF-16 name is in it (OVMF's store keeps each variable's name next to its data).
const STATE_REPORT: &str = r#"S="$D/img.raw.efinvramstate"
echo "STATE-EXISTS=$(test -f "$S" && echo yes || echo no)"
echo "STATE-SIZE=$(stat -c %s "$S" 2>/dev/null)"
python3 -c 'import sys; print("STATE-HAS-VAR=%d" % (open(sys.argv[1], "rb").read().count("RvmspawnTest".encode("utf-16-le")) > 0))' "$S" 2>/dev/null"#;

/// Fail early and clearly when what the batch needs is missing.
fn preflight() {
    rvmspawn_tests::ensure_assets();
    let fw = firmware_assets();
    for f in [
        "esp.raw",
        "esp-nvram.raw",
        "uki.efi",
        "sb/uki-signed.efi",
        "sb/uki-enroll.efi",
        "sb/PK.auth",
    ] {
        assert!(
            fw.join(f).is_file(),
            "{} is missing: scripts/assets.sh builds it when ovmf, dosfstools, mtools, fdisk, \
             systemd-boot-efi, openssl, efitools and sbsigntool are installed \
             (scripts/install-deps.sh)",
            fw.join(f).display()
        );
    }
    assert!(
        Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").is_file(),
        "Debian's OVMF is not installed (package ovmf; scripts/install-deps.sh)"
    );
    if mode() == Mode::TestHost && std::env::var_os("RVMSPAWN_TESTHOST_QEMU").is_none() {
        let out = Command::new(repo_root().join("scripts/testhost-qemu/build.sh"))
            .arg("--print-path")
            .output()
            .expect("run scripts/testhost-qemu/build.sh --print-path");
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            Path::new(&path).is_file(),
            "the patched test-host QEMU {path} is not built: run scripts/testhost-qemu/build.sh \
             (about 15 minutes; scripts/test.sh does), or set RVMSPAWN_TESTHOST_QEMU. Stock \
             QEMU 7.2 aborts in about 40% of nested OVMF boots."
        );
    }
}

/// A credential value whose SMBIOS string is well over 64 characters.
const LONG_VALUE: &str =
    "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789";

/// `LONG_VALUE` in base64, as the credential string carries it.
const LONG_VALUE_BASE64: &str = "MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6MDEyMzQ1Njc4OQ==";

#[test]
fn esp_image_boots_through_ovmf_and_systemd_boot() {
    let r = results().step("esp");
    assert_eq!(
        r.count_lines("RVMSPAWN-GUEST-INIT"),
        1,
        "the guest must reach /init once:\n{}",
        r.output
    );
    assert_eq!(r.value("RVMSPAWN-EFI"), Some("yes"), "{}", r.output);
    // The entry's options, after what systemd-boot adds: the entry was booted, nothing else.
    assert_eq!(
        r.value("RVMSPAWN-CMDLINE"),
        Some(format!("{SD_BOOT_INITRD_ARG} {TEST_OPTIONS}").as_str()),
        "{}",
        r.output
    );
    // systemd-boot ran from the image's ESP and chose the loader.conf default.
    assert!(
        r.value("RVMSPAWN-EFI-LoaderInfo")
            .is_some_and(|v| v.starts_with("systemd-boot ")),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("RVMSPAWN-EFI-LoaderDevicePartUUID"),
        Some(ESP_PARTUUID),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("RVMSPAWN-EFI-LoaderEntrySelected"),
        Some("test.conf"),
        "{}",
        r.output
    );
    // Credentials and -s strings reach the guest through the firmware byte for byte.
    assert_eq!(r.count_lines("RVMSPAWN-SMBIOS-DONE"), 1, "{}", r.output);
    // ARGS reach a disk boot as the stub's and the boot loader's command-line extras (there
    // is no command line to append to), first, as vmspawn passes them; a credential string
    // longer than 64 characters survives (OVMF drops those with a 2.x SMBIOS anchor).
    let long = format!("io.systemd.credential.binary:fwlong={LONG_VALUE_BASE64}");
    assert!(long.len() > 64);
    let want: [&[u8]; 5] = [
        b"io.systemd.stub.kernel-cmdline-extra=rvmspawn.extra=1",
        b"io.systemd.boot.kernel-cmdline-extra=rvmspawn.extra=1",
        // base64("hello")
        b"io.systemd.credential.binary:fwtest=aGVsbG8=",
        long.as_bytes(),
        b"io.systemd.credential:x=y",
    ];
    assert_eq!(
        oem_strings(r),
        want.iter().map(|s| s.to_vec()).collect::<Vec<_>>(),
        "{}",
        r.output
    );
    // The guest's EXIT_STATUS (over vsock, found through its SMBIOS credential) is rvmspawn's.
    assert_eq!(r.value("RVMSPAWN-NOTIFY"), Some("ok"), "{}", r.output);
    assert_eq!(r.rc, Some(42), "{}", r.output);
}

#[test]
fn uki_through_firmware_runs_systemd_stub() {
    let r = results().step("uki");
    assert_eq!(r.count_lines("RVMSPAWN-GUEST-INIT"), 1, "{}", r.output);
    assert_eq!(r.value("RVMSPAWN-EFI"), Some("yes"), "{}", r.output);
    // systemd-stub sets StubInfo; without it the kernel was started some other way.
    assert!(
        r.value("RVMSPAWN-EFI-StubInfo")
            .is_some_and(|v| v.starts_with("systemd-stub ")),
        "{}",
        r.output
    );
    // No ARGS: the stub uses the UKI's own command line.
    assert_eq!(
        r.value("RVMSPAWN-CMDLINE"),
        Some(UKI_CMDLINE),
        "{}",
        r.output
    );
    // Both vCPUs run, and the RAM above 4 GiB is the guest's (2816 MiB less the kernel's own
    // reservations; without the high part it would be under 2 GiB).
    assert_eq!(r.value("RVMSPAWN-NPROC"), Some("2"), "{}", r.output);
    let mem_kb: u64 = r
        .value("RVMSPAWN-MEMTOTAL-KB")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(mem_kb > 2_500_000 && mem_kb <= 2816 * 1024, "{}", r.output);
    assert_eq!(r.rc, Some(0), "{}", r.output);
}

#[test]
fn nvram_survives_reboot_and_restart() {
    let r = results().step("nvram-auto");
    assert_eq!(r.value("RUN1-RC"), Some("0"), "{}", r.output);
    assert_eq!(r.value("RUN2-RC"), Some("0"), "{}", r.output);
    let run1 = r.part("RUN1");
    assert_eq!(run1.values("RVMSPAWN-EFI"), ["yes", "yes"], "{}", r.output);
    // First boot: nothing yet, written; after the guest's reboot, in the same run: there.
    assert_eq!(
        run1.values("RVMSPAWN-EFIVAR"),
        ["none", NVRAM_VALUE],
        "{}",
        r.output
    );
    assert_eq!(run1.values("RVMSPAWN-EFIVAR-WRITE"), ["ok"], "{}", r.output);
    assert_eq!(r.value("STATE-AFTER-RUN1"), Some("yes"), "{}", r.output);
    // A new rvmspawn run on the same image: read from <image>.efinvramstate.
    let run2 = r.part("RUN2");
    assert_eq!(
        run2.values("RVMSPAWN-EFIVAR"),
        [NVRAM_VALUE],
        "{}",
        r.output
    );
    assert_eq!(run2.count_lines("RVMSPAWN-GUEST-INIT"), 1, "{}", r.output);
    assert_eq!(r.value("STATE-EXISTS"), Some("yes"), "{}", r.output);
    // The store has the template's size (OVMF_VARS_4M.fd: 540672 bytes) and holds the variable.
    assert_eq!(r.value("STATE-SIZE"), Some("540672"), "{}", r.output);
    assert_eq!(r.value("STATE-HAS-VAR"), Some("1"), "{}", r.output);
}

#[test]
fn with_smm_the_default_firmware_is_vmspawns_secure_boot_build() {
    let r = results().step("describe");
    assert_eq!(
        r.value("DEFAULT-CODE"),
        Some("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("NO-SB-CODE"),
        Some("/usr/share/OVMF/OVMF_CODE_4M.fd"),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("ENROLLED-CODE"),
        Some("/usr/share/OVMF/OVMF_CODE_4M.ms.fd"),
        "{}",
        r.output
    );
}

#[test]
fn secure_boot_keys_enrolled_by_the_guest_persist_and_are_enforced() {
    let r = results().step("secure-boot");
    // Run 1, setup mode: the unsigned UKI runs and enrolls the keys.
    let run1 = r.part("RUN1");
    assert_eq!(r.value("RUN1-RC"), Some("0"), "{}", r.output);
    assert_eq!(
        run1.value("RVMSPAWN-EFI-SetupMode"),
        Some("1"),
        "{}",
        r.output
    );
    assert_eq!(
        run1.value("RVMSPAWN-EFI-SecureBoot"),
        Some("0"),
        "{}",
        r.output
    );
    for v in ["db", "KEK", "PK"] {
        assert_eq!(
            run1.value(&format!("RVMSPAWN-SB-ENROLL-{v}")),
            Some("ok"),
            "{v}
{}",
            r.output
        );
    }
    // Run 2, a new rvmspawn on the same store: the keys are there, Secure Boot is on, and the
    // UKI signed with the db key runs.
    let run2 = r.part("RUN2");
    assert_eq!(r.value("RUN2-RC"), Some("0"), "{}", r.output);
    assert_eq!(run2.count_lines("RVMSPAWN-GUEST-INIT"), 1, "{}", r.output);
    assert_eq!(
        run2.value("RVMSPAWN-EFI-SecureBoot"),
        Some("1"),
        "{}",
        r.output
    );
    assert_eq!(
        run2.value("RVMSPAWN-EFI-SetupMode"),
        Some("0"),
        "{}",
        r.output
    );
    // Run 3: the unsigned UKI never runs; rvmspawn says why and exits ENOEXEC, long before
    // the step's timeout.
    let run3 = r.part("RUN3");
    assert_eq!(run3.count_lines("RVMSPAWN-GUEST-INIT"), 0, "{}", r.output);
    assert!(
        run3.output
            .contains("The firmware found nothing it could boot"),
        "{}",
        r.output
    );
    assert_eq!(r.value("RUN3-RC"), Some("8"), "{}", r.output);
    let secs: u64 = r
        .value("RUN3-SECS")
        .and_then(|s| s.parse().ok())
        .unwrap_or(999);
    assert!(secs < 150, "{secs} s\n{}", r.output);
}

#[test]
fn the_variable_store_takes_no_writes_from_outside_smm() {
    let r = results().step("secure-boot");
    // The guest's own read-back, and the state file after the run: still erased flash.
    assert_eq!(
        r.part("RUN1").value("RVMSPAWN-FLASH-POKE"),
        Some("0xFF"),
        "{}",
        r.output
    );
    assert_eq!(r.value("STATE-POKED-BYTE"), Some("ff"), "{}", r.output);
}

#[test]
fn nvram_off_keeps_nothing_between_runs() {
    let r = results().step("nvram-off");
    assert_eq!(r.value("RUN1-RC"), Some("0"), "{}", r.output);
    assert_eq!(r.value("RUN2-RC"), Some("0"), "{}", r.output);
    // Within a run the variable survives the guest's reboot...
    let run1 = r.part("RUN1");
    assert_eq!(
        run1.values("RVMSPAWN-EFIVAR"),
        ["none", NVRAM_VALUE],
        "{}",
        r.output
    );
    // ...but a new run starts from the template again.
    let run2 = r.part("RUN2");
    assert_eq!(
        run2.values("RVMSPAWN-EFIVAR").first().copied(),
        Some("none"),
        "{}",
        r.output
    );
    // Nothing beside the image.
    assert_eq!(r.value("FILES"), Some("img.raw "), "{}", r.output);
}

/// The descriptor directory of Debian's `ovmf` package.
const DESCRIPTORS: &str = "/usr/share/qemu/firmware";

/// rvmspawn with no user descriptors (an empty `$XDG_CONFIG_HOME`), on this machine: no VM.
fn rvmspawn_firmware(arg: &str) -> std::process::Output {
    assert!(
        Path::new(DESCRIPTORS).join("60-edk2-x86_64.json").is_file(),
        "Debian's OVMF descriptors are not installed (package ovmf; scripts/install-deps.sh)"
    );
    let xdg = std::env::temp_dir().join(format!("rvmspawn-fwtest-{}-{arg}", std::process::id()));
    let _ = std::fs::remove_dir_all(&xdg);
    std::fs::create_dir_all(&xdg).expect("create an empty XDG_CONFIG_HOME");
    let out = Command::new(rvmspawn_bin())
        .arg(arg)
        .env("XDG_CONFIG_HOME", &xdg)
        .output()
        .expect("run rvmspawn");
    let _ = std::fs::remove_dir_all(&xdg);
    out
}

#[test]
fn firmware_list_uses_debian_descriptors() {
    let out = rvmspawn_firmware("--firmware=list");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    // One path per line, in selection order (file name order); /etc/qemu/firmware may add
    // others on some machines, so only Debian's are compared.
    let debian: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with(DESCRIPTORS))
        .collect();
    assert_eq!(
        debian,
        [
            "/usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json",
            "/usr/share/qemu/firmware/50-edk2-x86_64-secure.json",
            "/usr/share/qemu/firmware/60-edk2-x86_64.json",
        ],
        "{stdout}"
    );

    // The selection: enrolled-keys is excluded and requires-smm skipped, so the plain
    // descriptor, whose code is OVMF_CODE_4M.fd, not the .secboot one.
    let out = rvmspawn_firmware("--firmware=describe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\"/usr/share/OVMF/OVMF_CODE_4M.fd\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"/usr/share/OVMF/OVMF_VARS_4M.fd\""),
        "{stdout}"
    );
    assert!(!stdout.contains("secboot"), "{stdout}");
}
