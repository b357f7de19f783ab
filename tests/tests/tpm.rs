//! The TPM (`--tpm=`, `--tpm-state=`): rvmspawn's CRB device backed by swtpm, checked from
//! inside the guest. The guest's `/init` (`rvmspawn.tpm*=` switches, scripts/initramfs/guest-init)
//! and a `-D` tree's own init speak raw TPM 2.0 to `/dev/tpmrm0` through `rvmspawn-guest`
//! (guest-tools/src/tpm.rs): random bytes, PCR extends and reads, an NV index. The expected PCR
//! values are computed here: PCR 16 from the digest the guest extends it with, PCR 11 of a
//! measured UKI direct boot by bookworm's `systemd-measure calculate` on the UKI's sections
//! (plus `.sbat`, which systemd-stub measures since 254 and 252's tool does not know), PCR 12
//! from the command-line extras.
//!
//! And rvmspawn's duties as swtpm's supervisor: without swtpm, `--tpm=yes` fails and `auto`
//! boots without a TPM; swtpm killed ends the run; rvmspawn killed takes swtpm with it.
//!
//! One batch, one test-host start. The steps run with `SYSTEMD_LOG_LEVEL=debug` where the
//! TPM's start-up times are wanted: `tpm_start_up_times_are_reported` prints them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rvmspawn_tests::{Batch, BootResult, Results, assets, repo_root};
use sha2::{Digest, Sha256};

/// One boot (with a swtpm start, maybe a manufacture): generous for a loaded test host.
const T: &str = "timeout -s KILL 240";
/// A firmware boot (OVMF) in the test host: about a minute, several allowed.
const T_FIRMWARE: &str = "timeout -s KILL 400";
/// What the guest extends PCR 16 with.
const EXTEND: &str = "52564d535041574e2d54504d2d5043522d31362d455854454e442d3031323334";
/// The NV index the guests use (owner range).
const NV_INDEX: &str = "0x1500016";
/// The ARGS of the measured UKI boot: the command-line extras that go into PCR 12.
const UKI_ARGS: &str = "rvmspawn.tpm-pcrs=11,12 extra=arg";
/// The measured UKI's embedded command line.
const UKI_CMDLINE: &str = "rvmspawn.uki=measured";
/// The firmware UKI's embedded command line (nothing adds `console=` on that path).
const FW_UKI_CMDLINE: &str = "console=ttyS0 rvmspawn.efi=1 rvmspawn.tpm=1 rvmspawn.tpm-pcrs=11";

/// Shell for the steps. `tree` builds a busybox tree in `$D/root` with `rvmspawn-guest` in it,
/// whose `/sbin/init` writes its `rvmspawn.tree-nv-write=TEXT` to the NV index, prints the index's
/// value as `RVMSPAWN-TREE-NV=` and powers off (or hangs with `rvmspawn.tree=hang`).
/// `processes_below swtpm PID` (`rvmspawn_tests::processes_below_sh`) lists the swtpm processes
/// below PID (from `/proc/PID/task/*/children`, never by name alone); `alive PID` is true while PID
/// runs (not gone, not a zombie); `wait_dead PID` waits up to 5 s for it to end; `wait_for PATTERN
/// FILE` up to 120 s for a line.
const HELPERS: &str = concat!(
    rvmspawn_tests::processes_below_sh!(),
    r#"D=$(mktemp -d)
tree() {
    mkdir -p "$D/root/bin" "$D/root/sbin" "$D/root/proc" "$D/root/dev" "$D/root/sys"
    cp /bin/busybox "$D/root/bin/busybox"
    for a in sh mount cat sleep poweroff; do
        ln -s busybox "$D/root/bin/$a"
    done
    cp "$GUEST_TOOL" "$D/root/bin/rvmspawn-guest"
    cat >"$D/root/sbin/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
echo "RVMSPAWN-ROOT-INIT=ok"
for word in $(cat /proc/cmdline); do
    case $word in
        rvmspawn.tree-nv-write=*)
            if out=$(rvmspawn-guest nv-write __INDEX__ "${word#*=}" 2>&1); then
                echo "RVMSPAWN-TREE-NV-WRITE=ok"
            else
                echo "RVMSPAWN-TREE-NV-WRITE=fail:$out"
            fi ;;
    esac
done
echo "RVMSPAWN-TREE-NV=$(rvmspawn-guest nv-read __INDEX__ 2>&1)"
case " $(cat /proc/cmdline) " in
    *" rvmspawn.tree=hang "*)
        echo "RVMSPAWN-TREE-HANG"
        while :; do sleep 3600; done ;;
esac
poweroff -f
INIT
    sed -i "s/__INDEX__/$NV_INDEX/" "$D/root/sbin/init"
    chmod 755 "$D/root/sbin/init"
}
alive() {
    st=$(awk '/^State:/ { print $2 }' /proc/"$1"/status 2>/dev/null)
    [ -n "$st" ] && [ "$st" != Z ]
}
wait_dead() {
    i=0
    while alive "$1" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
}
wait_for() {
    i=0
    until grep -q "$1" "$2" || [ $i -ge 600 ]; do sleep 0.2; i=$((i+1)); done
    grep -q "$1" "$2"
}
"#
);

/// Start rvmspawn (its default TPM) on a guest that uses the TPM and hangs; `vm` is its PID
/// once the guest has used the TPM, `sw` its swtpm processes (`HOST-SWTPM-RUNNING=` says how
/// many). A guest that never gets there is killed, so the step ends.
const START_HANGING: &str = r#""$RVMSPAWN" --linux="$KERNEL" --initrd="$INITRD" rvmspawn.tpm=1 \
    rvmspawn.action=hang >"$D/vm" 2>&1 &
vm=$!
wait_for '^RVMSPAWN-TPM-EVENT-LOG=' "$D/vm" || kill -KILL $vm
sw=$(processes_below swtpm $vm)
echo "HOST-SWTPM-RUNNING=$(echo $sw | wc -w)"
"#;

/// After a kill: how many of the swtpm processes found before are still alive, then what
/// rvmspawn printed.
const REPORT_LEFT: &str = r#"left=0
for p in $sw; do
    wait_dead $p
    alive $p && left=$((left+1))
done
echo "HOST-SWTPM-LEFT=$left"
cat "$D/vm"
rm -rf "$D"
exit $rc"#;

/// Hides swtpm from rvmspawn: a mount namespace in which `/usr/bin/swtpm` is `/dev/null` (not
/// executable), and a PATH without any swtpm. `$1` is the rest of rvmspawn's command line.
const WITHOUT_SWTPM: &str = r#"unshare -m sh -c '
mount --bind /dev/null /usr/bin/swtpm || exit 99
echo "HOST-SWTPM-EXECUTABLE=$(test -x /usr/bin/swtpm && echo yes || echo no)"
PATH=/usr/sbin exec /usr/bin/timeout -s KILL 240 "$RVMSPAWN" --linux="$KERNEL" --initrd="$INITRD" "$@"
' sh"#;

/// The batch's results and the values computed on this side.
struct Fixture {
    results: Results,
    /// PCR 11 after systemd-stub 257 would have measured the direct-boot UKI, lowercase hex.
    pcr11_direct: String,
    /// PCR 11 after bookworm's systemd-stub 252 measured the firmware UKI (sections without
    /// `.sbat`).
    pcr11_firmware: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        rvmspawn_tests::ensure_assets();
        // The UKIs are built here, under the repository, which the test host sees.
        let dir = repo_root().join(format!(".cache/test-batches/tpm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the UKI directory");
        let direct = build_uki(&dir, "direct", UKI_CMDLINE);
        let firmware = build_uki(&dir, "firmware", FW_UKI_CMDLINE);
        let pcr11_direct = hex(&extend_section(
            measure_calculate(&direct),
            ".sbat",
            &section_of(&direct.uki, ".sbat"),
        ));
        let pcr11_firmware = hex(&measure_calculate(&firmware));
        let guest_tool = assets().join("guest/rvmspawn-guest");
        let vars = format!(
            "GUEST_TOOL='{}'\nNV_INDEX={NV_INDEX}\n",
            guest_tool.display()
        );
        // kill -9 of PIDS (swtpm's or rvmspawn's) in a running VM.
        let kill = |pids: &str| {
            format!("{vars}{HELPERS}{START_HANGING}kill -KILL {pids}\nwait $vm\nrc=$?\n{REPORT_LEFT}")
        };
        let results = Batch::new()
            .with_tpm()
            .timeout_secs(1800)
            .step(
                // The default (--tpm=auto with swtpm installed), no -i/-D: a state manufactured
                // for the run.
                "default",
                format!(
                    r#"SYSTEMD_LOG_LEVEL=debug {T} "$RVMSPAWN" --linux="$KERNEL" --initrd="$INITRD" \
    rvmspawn.tpm=1 rvmspawn.tpm-extend={EXTEND}"#
                ),
            )
            .step(
                // --tpm-state=auto beside the tree: boot 1 writes the NV index, boot 2 (the
                // default state option) reads it.
                "state-auto",
                format!(
                    r#"{vars}{HELPERS}tree
SYSTEMD_LOG_LEVEL=debug {T} "$RVMSPAWN" --linux="$KERNEL" --initrd="$INITRD" -D "$D/root" \
    --tpm-state=auto rvmspawn.tree-nv-write=kept-in-the-state >"$D/boot1" 2>&1
echo "HOST-BOOT1-RC=$?"
echo "HOST-MANUFACTURED=$(test -f "$D/root.tpmstate/.manufactured" && echo yes || echo no)"
SYSTEMD_LOG_LEVEL=debug {T} "$RVMSPAWN" --linux="$KERNEL" --initrd="$INITRD" -D "$D/root" \
    >"$D/boot2" 2>&1
echo "HOST-BOOT2-RC=$?"
sed 's/^/BOOT1: /' "$D/boot1"
sed 's/^/BOOT2: /' "$D/boot2"
rm -rf "$D""#
                ),
            )
            .step(
                // --tpm-state=off: the state lives in the run directory while the VM runs, and
                // goes with it.
                "state-off",
                format!(
                    r#"{vars}{HELPERS}tree
R=${{XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/rvmspawn}}
R=${{R:-/run/rvmspawn}}/tpmoff
# No ACPI handler in the tree: SIGTERM stops the VM at once.
RVMSPAWN_STOP_TIMEOUT=0 "$RVMSPAWN" -M tpmoff --linux="$KERNEL" --initrd="$INITRD" -D "$D/root" --tpm-state=off \
    rvmspawn.tree-nv-write=only-for-this-run rvmspawn.tree=hang >"$D/vm" 2>&1 &
vm=$!
wait_for RVMSPAWN-TREE-HANG "$D/vm" || kill -KILL $vm
echo "HOST-RUNDIR-TPM-STATE=$(find "$R" -name 'tpm2-00.permall' 2>/dev/null | wc -l)"
kill -TERM $vm
wait $vm
rc=$?
echo "HOST-RUNDIR-LEFT=$(test -e "$R" && echo yes || echo no)"
echo "HOST-FILES=$(ls -A "$D" | grep -v '^vm$' | tr '\n' ' ')"
cat "$D/vm"
rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // A relative --tpm-state=./PATH, from the working directory.
                "state-relative",
                format!(
                    r#"{vars}{HELPERS}tree
cd "$D"
{T} "$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" -D "$D/root" --tpm-state=./rel \
    rvmspawn.tree-nv-write=relative
rc=$?
echo "HOST-REL-MANUFACTURED=$(test -f "$D/rel/.manufactured" && echo yes || echo no)"
echo "HOST-FILES=$(ls -A "$D" | tr '\n' ' ')"
cd /
rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // A guest reboot is a platform reset: PCRs back to zero, NV kept.
                "reboot",
                format!(
                    r#"{T} "$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" \
    rvmspawn.tpm-reboot={NV_INDEX}:kept-over-a-reboot:{EXTEND}"#
                ),
            )
            .step(
                "yes-without-swtpm",
                format!("{WITHOUT_SWTPM} --tpm=yes rvmspawn.tpm=1"),
            )
            .step(
                // The default, auto.
                "auto-without-swtpm",
                format!("{WITHOUT_SWTPM} rvmspawn.tpm=1"),
            )
            .step("swtpm-killed", kill("$sw"))
            .step("rvmspawn-killed", kill("$vm"))
            .step(
                // Measured direct boot of a UKI: PCR 11 and 12 as systemd-stub would leave them.
                "measured-uki",
                format!(
                    r#"SYSTEMD_LOG_LEVEL=debug {T} "$RVMSPAWN" --linux='{}' {UKI_ARGS}"#,
                    direct.uki.display()
                ),
            )
            .step(
                // Through UEFI: OVMF finds the TPM and measures the boot; systemd-stub 252
                // measures the UKI into PCR 11.
                "firmware",
                format!(
                    r#"{T_FIRMWARE} "$RVMSPAWN" -q --linux='{}' --firmware=uefi"#,
                    firmware.uki.display()
                ),
            )
            .run();
        let _ = std::fs::remove_dir_all(&dir);
        Fixture {
            results,
            pcr11_direct,
            pcr11_firmware,
        }
    })
}

fn results() -> &'static Results {
    &fixture().results
}

/// A UKI built from the guest kernel and initramfs with `objcopy` and Debian's systemd-boot
/// stub (as `tests/tests/smbios.rs` builds one), and its sections' contents as files.
struct Uki {
    uki: PathBuf,
    linux: PathBuf,
    osrel: PathBuf,
    cmdline: PathBuf,
    initrd: PathBuf,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn build_uki(dir: &Path, name: &str, cmdline: &str) -> Uki {
    const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    assert!(
        Path::new(STUB).is_file(),
        "{STUB} is missing (package systemd-boot-efi)"
    );
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let cmdline_file = dir.join("cmdline.in");
    let osrel_file = dir.join("osrel.in");
    std::fs::write(&cmdline_file, cmdline).unwrap();
    std::fs::write(&osrel_file, "ID=rvmspawn-test\n").unwrap();
    let guest = assets().join("guest");
    let uki = dir.join("uki.efi");
    let mut objcopy = Command::new("objcopy");
    for (section, file, vma) in [
        (".osrel", osrel_file, "0x20000"),
        (".cmdline", cmdline_file, "0x30000"),
        (".linux", guest.join("vmlinuz"), "0x2000000"),
        (".initrd", guest.join("initramfs.cpio.gz"), "0x4000000"),
    ] {
        objcopy
            .arg("--add-section")
            .arg(format!("{section}={}", file.display()))
            .arg("--change-section-vma")
            .arg(format!("{section}={vma}"));
    }
    run(objcopy.arg(STUB).arg(&uki));
    // The sections as the UKI holds them, for systemd-measure.
    let dumped = |section: &str| {
        let path = dir.join(section.trim_start_matches('.'));
        std::fs::write(&path, section_of(&uki, section)).unwrap();
        path
    };
    Uki {
        linux: dumped(".linux"),
        osrel: dumped(".osrel"),
        cmdline: dumped(".cmdline"),
        initrd: dumped(".initrd"),
        uki,
    }
}

/// The contents of PE section `name` of `file`, VirtualSize bytes (what the loaded image holds
/// and systemd-stub measures), extracted with `objcopy --dump-section`; its length is checked
/// against the section table's VirtualSize.
fn section_of(file: &Path, name: &str) -> Vec<u8> {
    let out = file.with_extension(format!("dump{name}"));
    run(Command::new("objcopy")
        .arg("--dump-section")
        .arg(format!("{name}={}", out.display()))
        .arg(file)
        .arg(file.with_extension("scratch")));
    let _ = std::fs::remove_file(file.with_extension("scratch"));
    let mut data = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let virtual_size = pe_virtual_size(&std::fs::read(file).unwrap(), name)
        .unwrap_or_else(|| panic!("no section {name} in {}", file.display()));
    assert!(
        data.len() >= virtual_size,
        "{name}: objcopy gave {} bytes, VirtualSize {virtual_size}",
        data.len()
    );
    data.truncate(virtual_size);
    data
}

/// The VirtualSize of PE section `name` (PE/COFF: the header at `e_lfanew`, the section table
/// after the optional header, 40 bytes per section).
fn pe_virtual_size(pe: &[u8], name: &str) -> Option<usize> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(pe.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(pe.get(o..o + 4)?.try_into().ok()?));
    let header = u32_at(0x3c)? as usize;
    let sections = u16_at(header + 6)? as usize;
    let table = header + 24 + u16_at(header + 20)? as usize;
    (0..sections).find_map(|i| {
        let entry = table + 40 * i;
        let raw = pe.get(entry..entry + 8)?;
        let len = raw.iter().position(|b| *b == 0).unwrap_or(8);
        (&raw[..len] == name.as_bytes()).then(|| u32_at(entry + 8).map(|v| v as usize))?
    })
}

/// PCR 11 after the UKI's `.linux`, `.osrel`, `.cmdline` and `.initrd` (name, then contents,
/// each), as bookworm's `systemd-measure calculate` (systemd 252) computes it; `--phase=`
/// (empty) asks for the sections alone, without the boot phases systemd-pcrphase adds later.
fn measure_calculate(uki: &Uki) -> [u8; 32] {
    let tool = "/lib/systemd/systemd-measure";
    assert!(
        Path::new(tool).is_file(),
        "{tool} is missing (package systemd)"
    );
    let out = run(Command::new(tool)
        .args(["calculate", "--bank=sha256", "--phase="])
        .arg(format!("--linux={}", uki.linux.display()))
        .arg(format!("--osrel={}", uki.osrel.display()))
        .arg(format!("--cmdline={}", uki.cmdline.display()))
        .arg(format!("--initrd={}", uki.initrd.display())));
    let value = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("11:sha256="))
        .unwrap_or_else(|| panic!("no PCR 11 in systemd-measure's output: {out}"));
    unhex(value)
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// A PCR after TPM2_PCR_Extend with `digest`.
fn extend(pcr: [u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    sha256(&[&pcr, digest])
}

/// A PCR after systemd-stub's measurement of one section: its name with a NUL, then its
/// contents.
fn extend_section(pcr: [u8; 32], name: &str, contents: &[u8]) -> [u8; 32] {
    let pcr = extend(pcr, &sha256(&[name.as_bytes(), &[0]]));
    extend(pcr, &sha256(&[contents]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> [u8; 32] {
    assert_eq!(s.len(), 64, "{s}");
    std::array::from_fn(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
}

/// The number in a debug line `TPM: WHAT ... in N ms.`.
fn millis(r: &BootResult, what: &str) -> Option<u64> {
    r.output.lines().find_map(|l| {
        let rest = &l[l.find(&format!("TPM: {what}"))?..];
        let ms = rest.rsplit_once(" in ")?.1.strip_suffix(" ms.")?;
        ms.trim().parse().ok()
    })
}

/// The lines rvmspawn itself printed: not the guest's (its `RVMSPAWN-` report, the kernel's
/// `[  time]` messages) nor the step's `HOST-` lines.
fn rvmspawn_lines(r: &BootResult) -> Vec<&str> {
    r.output
        .lines()
        .filter(|l| !l.starts_with("RVMSPAWN-") && !l.starts_with("HOST-") && !l.starts_with('['))
        .collect()
}

/// The guest printed `KEY=want`.
fn expect(r: &BootResult, key: &str, want: &str) {
    assert_eq!(r.value(key), Some(want), "{key}\n{}", r.output);
}

const ZERO_PCR: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// PCR 16 after one extend with `EXTEND`, from zero.
fn pcr16_extended() -> String {
    hex(&extend([0; 32], &unhex(EXTEND)))
}

#[test]
fn the_guest_has_a_crb_tpm_with_random_numbers_and_pcrs() {
    let r = results().step("default");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    expect(r, "RVMSPAWN-TPM-DEV", "tpm0 tpmrm0");
    expect(r, "RVMSPAWN-TPM-IOMEM", "fed40000-fed40fff : MSFT0101:00");
    // rvmspawn started the TPM up as firmware would: the kernel did not have to (its own
    // TPM2_Startup has a 750 ms limit that a loaded host can miss).
    expect(r, "RVMSPAWN-TPM-KERNEL-STARTUP", "no");
    let one = r.value("RVMSPAWN-TPM-RANDOM-1").expect("random bytes");
    let two = r.value("RVMSPAWN-TPM-RANDOM-2").expect("random bytes");
    for random in [one, two] {
        assert_eq!(
            random.len(),
            32,
            "16 bytes asked for: {random}\n{}",
            r.output
        );
        assert!(random.bytes().all(|b| b.is_ascii_hexdigit()), "{random}");
    }
    assert_ne!(one, two, "{}", r.output);
    // The guest's extend of PCR 16, read back by a TPM command and by the kernel.
    expect(r, "RVMSPAWN-TPM-EXTEND", "ok");
    let want = pcr16_extended();
    expect(r, "RVMSPAWN-TPM-PCR-16", want.as_str());
    expect(r, "RVMSPAWN-TPM-SYSFS-PCR-16", want.as_str());
    // No firmware, no event log.
    expect(r, "RVMSPAWN-TPM-EVENT-LOG", "none");
}

#[test]
fn an_nv_index_survives_a_restart_in_the_state_beside_the_tree() {
    let r = results().step("state-auto");
    let (boot1, boot2) = (r.part("BOOT1"), r.part("BOOT2"));
    expect(r, "HOST-BOOT1-RC", "0");
    expect(r, "HOST-BOOT2-RC", "0");
    expect(&boot1, "RVMSPAWN-ROOT-INIT", "ok");
    expect(&boot1, "RVMSPAWN-TREE-NV-WRITE", "ok");
    expect(&boot1, "RVMSPAWN-TREE-NV", "kept-in-the-state");
    expect(r, "HOST-MANUFACTURED", "yes");
    // The second run finds the index the first one wrote, in the same state.
    expect(&boot2, "RVMSPAWN-ROOT-INIT", "ok");
    expect(&boot2, "RVMSPAWN-TREE-NV", "kept-in-the-state");
    assert!(millis(&boot1, "manufactured").is_some(), "{}", r.output);
    assert_eq!(
        millis(&boot2, "manufactured"),
        None,
        "the second run reuses the state\n{}",
        r.output
    );
}

#[test]
fn tpm_state_off_lives_in_the_run_directory_and_goes_with_it() {
    let r = results().step("state-off");
    expect(r, "RVMSPAWN-ROOT-INIT", "ok");
    expect(r, "RVMSPAWN-TREE-NV", "only-for-this-run");
    expect(r, "HOST-RUNDIR-TPM-STATE", "1");
    assert_eq!(r.rc, Some(0), "SIGTERM ends the run normally\n{}", r.output);
    expect(r, "HOST-RUNDIR-LEFT", "no");
    // Nothing beside the tree: no root.tpmstate.
    expect(r, "HOST-FILES", "root ");
}

#[test]
fn a_relative_tpm_state_path_is_taken_from_the_working_directory() {
    let r = results().step("state-relative");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    expect(r, "RVMSPAWN-TREE-NV", "relative");
    expect(r, "HOST-REL-MANUFACTURED", "yes");
    expect(r, "HOST-FILES", "rel root ");
}

#[test]
fn a_guest_reboot_resets_the_pcrs_and_keeps_nv() {
    let r = results().step("reboot");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    assert_eq!(r.count_lines("RVMSPAWN-GUEST-INIT"), 2, "{}", r.output);
    assert_eq!(r.count_lines("RVMSPAWN-TPM-REBOOT"), 1, "{}", r.output);
    let nv = r.values("RVMSPAWN-TPM-NV");
    assert_eq!(nv.len(), 2, "{}", r.output);
    assert!(
        nv[0].starts_with("fail:"),
        "not defined at first\n{}",
        r.output
    );
    assert_eq!(nv[1], "kept-over-a-reboot", "{}", r.output);
    let want = pcr16_extended();
    for key in ["RVMSPAWN-TPM-PCR-16", "RVMSPAWN-TPM-SYSFS-PCR-16"] {
        assert_eq!(
            r.values(key),
            [want.as_str(), ZERO_PCR],
            "{key}: extended in boot 1, zero after the reboot\n{}",
            r.output
        );
    }
}

#[test]
fn tpm_yes_without_swtpm_fails_naming_it() {
    let r = results().step("yes-without-swtpm");
    expect(r, "HOST-SWTPM-EXECUTABLE", "no");
    assert_eq!(r.rc, Some(2), "ENOENT\n{}", r.output);
    assert!(
        r.output.contains("Failed to find swtpm binary"),
        "{}",
        r.output
    );
    assert_eq!(r.count_lines("RVMSPAWN-GUEST-INIT"), 0, "{}", r.output);
}

#[test]
fn tpm_auto_without_swtpm_boots_without_a_tpm_and_says_nothing() {
    let r = results().step("auto-without-swtpm");
    expect(r, "HOST-SWTPM-EXECUTABLE", "no");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    assert_eq!(r.count_lines("RVMSPAWN-GUEST-INIT"), 1, "{}", r.output);
    expect(r, "RVMSPAWN-TPM-DEV", "");
    // No device claims the CRB page (rvmspawn's e820 map may still reserve it).
    expect(r, "RVMSPAWN-TPM-IOMEM", "none");
    let said: Vec<&str> = rvmspawn_lines(r)
        .into_iter()
        .filter(|l| l.to_lowercase().contains("swtpm") || l.contains("TPM"))
        .collect();
    assert!(said.is_empty(), "{said:?}\n{}", r.output);
}

#[test]
fn swtpm_dying_ends_the_run_with_an_error_naming_it() {
    let r = results().step("swtpm-killed");
    expect(r, "RVMSPAWN-TPM-DEV", "tpm0 tpmrm0");
    expect(r, "HOST-SWTPM-RUNNING", "1");
    assert_eq!(r.rc, Some(71), "EPROTO\n{}", r.output);
    assert!(
        rvmspawn_lines(r)
            .iter()
            .any(|l| l.contains("swtpm") && l.contains("killed by signal 9")),
        "{}",
        r.output
    );
    expect(r, "HOST-SWTPM-LEFT", "0");
}

#[test]
fn killing_rvmspawn_takes_swtpm_with_it() {
    let r = results().step("rvmspawn-killed");
    expect(r, "RVMSPAWN-TPM-DEV", "tpm0 tpmrm0");
    expect(r, "HOST-SWTPM-RUNNING", "1");
    assert_eq!(r.rc, Some(137), "{}", r.output);
    expect(r, "HOST-SWTPM-LEFT", "0");
}

#[test]
fn a_measured_uki_direct_boot_leaves_pcr_11_and_12_as_systemd_stub_would() {
    let f = fixture();
    let r = f.results.step("measured-uki");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    let cmdline = r
        .value("RVMSPAWN-CMDLINE")
        .expect("the guest's command line");
    assert!(
        cmdline.contains(UKI_CMDLINE) && cmdline.ends_with(UKI_ARGS),
        "{cmdline}"
    );
    for key in ["RVMSPAWN-TPM-PCR-11", "RVMSPAWN-TPM-SYSFS-PCR-11"] {
        expect(r, key, f.pcr11_direct.as_str());
    }
    // PCR 12: the command-line extras as UTF-16LE with its NUL, as systemd-stub measures the
    // options it was given.
    let utf16: Vec<u8> = UKI_ARGS
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect();
    let want = hex(&extend([0; 32], &sha256(&[&utf16])));
    for key in ["RVMSPAWN-TPM-PCR-12", "RVMSPAWN-TPM-SYSFS-PCR-12"] {
        expect(r, key, want.as_str());
    }
}

#[test]
fn through_uefi_ovmf_finds_the_tpm_and_measures_the_boot() {
    let f = fixture();
    let r = f.results.step("firmware");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    expect(r, "RVMSPAWN-EFI", "yes");
    expect(r, "RVMSPAWN-TPM-DEV", "tpm0 tpmrm0");
    let log: u64 = r
        .value("RVMSPAWN-TPM-EVENT-LOG")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(log > 0, "the firmware's event log\n{}", r.output);
    // systemd-stub 252 itself measured the UKI's sections, as its systemd-measure predicts.
    expect(r, "RVMSPAWN-TPM-PCR-11", f.pcr11_firmware.as_str());
}

/// Not a check: the TPM's start-up cost from rvmspawn's debug lines, for the notes.
#[test]
fn tpm_start_up_times_are_reported() {
    let r = results().step("state-auto");
    let (boot1, boot2) = (r.part("BOOT1"), r.part("BOOT2"));
    let first = (
        millis(&boot1, "manufactured"),
        millis(&boot1, "swtpm ready"),
    );
    let later = millis(&boot2, "swtpm ready");
    eprintln!(
        "TPM start-up: first boot manufacture {:?} ms + swtpm ready {:?} ms; later boot swtpm ready {:?} ms",
        first.0, first.1, later
    );
    let d = results().step("default");
    eprintln!(
        "TPM start-up (no -D, state in the run directory): manufacture {:?} ms + swtpm ready {:?} ms",
        millis(d, "manufactured"),
        millis(d, "swtpm ready")
    );
    assert!(first.1.is_some() && later.is_some(), "{}", r.output);
    // The first boot manufactured the state beside the tree; the later one used it as it was.
    assert!(
        first.0.is_some(),
        "boot 1 manufactured nothing:\n{}",
        r.output
    );
    assert_eq!(millis(&boot2, "manufactured"), None, "{}", r.output);
}
