//! A real systemd guest: Debian trixie (systemd 257), built by scripts/systemd-guest.sh,
//! booted by the Debian cloud kernel and the project's initramfs with `-D` (virtio-fs) and with
//! `-x -i` (the GPT disk image through rvmspawn's copy-on-write overlay, root=PARTUUID= found by
//! rvmspawn). The assertions are on what
//! systemd itself reports (rvmspawn-check.service prints it on the console) and on what
//! reaches the host: READY=1 and EXIT_STATUS= over the notify socket, and a clean poweroff
//! after SIGTERM pressed the ACPI power button (systemd-logind's HandlePowerKey=poweroff).

use std::sync::OnceLock;

use rvmspawn_tests::{BootResult, Results};

/// Shell functions for the steps: `writable_tree` gives `$D/root`, a writable view of the
/// trixie tree (an overlay on the test host's read-only view of the repository, or a copy
/// where overlayfs refuses), `wait_for PATTERN FILE` (at most 300 s), `ms` (a clock in ms).
fn helpers() -> String {
    let trixie = rvmspawn_tests::assets().join("trixie");
    format!(
        r#"T='{trixie}'
D=$(mktemp -d)
writable_tree() {{
    mkdir -p "$D/root" "$D/upper" "$D/work"
    mount -t overlay overlay -o lowerdir="$T/root",upperdir="$D/upper",workdir="$D/work" "$D/root" 2>/dev/null ||
        cp -a "$T/root/." "$D/root/"
}}
wait_for() {{ # PATTERN FILE
    i=0
    until grep -q "$1" "$2" || [ $i -ge 1500 ]; do sleep 0.2; i=$((i+1)); done
}}
ms() {{ echo $(($(date +%s%N) / 1000000)); }}
"#,
        trixie = trixie.display()
    )
}

/// Start rvmspawn in the background on "$@", wait for systemd's report, then SIGTERM: the
/// graceful stop. Prints the times from start to READY=1 and from SIGTERM to the exit.
const BOOT_REPORT_STOP: &str = r#"t0=$(ms)
"$RVMSPAWN" --qemu-mem=1G --linux="$KERNEL" --initrd="$INITRD" "$@" >"$D/vm" 2>&1 &
vm=$!
wait_for 'VM reported READY=1' "$D/vm"
echo "HOST-READY-MS=$(($(ms) - t0))"
wait_for RVMSPAWN-SYSTEMD-CHECKED "$D/vm"
t1=$(ms)
kill -TERM $vm
wait $vm
rc=$?
echo "HOST-STOP-MS=$(($(ms) - t1))"
cat "$D/vm"
"#;

fn results() -> &'static Results {
    static RESULTS: OnceLock<Results> = OnceLock::new();
    RESULTS.get_or_init(|| {
        let h = helpers();
        rvmspawn_tests::Batch::new()
            .step(
                // -D with a credential and a --bind (fstab.extra).
                "directory",
                format!(
                    r#"{h}writable_tree
mkdir -p "$D/share" && echo shared-file >"$D/share/f"
set -- -D "$D/root" --set-credential=rvmtest.value:hello-systemd --bind="$D/share:/mnt/share" \
    systemd.wants=rvmspawn-check.service
{BOOT_REPORT_STOP}umount "$D/root" 2>/dev/null
rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // -x -i: the GPT image as it is in the repository (which the test host sees
                // read-only), its writes in rvmspawn's copy-on-write overlay. The image's
                // ext4 superblock (which a read-write mount updates) is the same afterwards.
                "image",
                format!(
                    r#"{h}sb() {{ dd if="$T/disk.raw" bs=4096 skip=256 count=1 status=none | md5sum | cut -d' ' -f1; }}
echo "HOST-SUPERBLOCK-BEFORE=$(sb)"
echo "HOST-PARTUUID=$(cat "$T/partuuid")"
set -- -x -i "$T/disk.raw" --set-credential=rvmtest.value:hello-image systemd.wants=rvmspawn-check.service
{BOOT_REPORT_STOP}echo "HOST-SUPERBLOCK-AFTER=$(sb)"
rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // systemd.run= with systemd.run_success_action=exit: the unit's exit status
                // reaches rvmspawn as EXIT_STATUS= (systemd's own, over vmm.notify_socket).
                "run-exit",
                format!(
                    r#"{h}"$RVMSPAWN" -q --qemu-mem=1G --linux="$KERNEL" --initrd="$INITRD" -x -i "$T/disk.raw" \
    'systemd.run="/usr/local/bin/rvmspawn-exit 7"' systemd.run_success_action=exit \
    systemd.run_failure_action=exit >"$D/vm" 2>&1
rc=$?
cat "$D/vm"
rm -rf "$D"
exit $rc"#
                ),
            )
            .run()
    })
}

fn check_systemd_report(r: &BootResult, credential: &str) {
    let state = r
        .value("RVMSPAWN-SYSTEMD-STATE")
        .unwrap_or_else(|| panic!("no report from systemd\n{}", r.output));
    let failed: Vec<&str> = r
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("RVMSPAWN-SYSTEMD-FAILED="))
        .collect();
    eprintln!("systemd: {state}, failed units: {failed:?}");
    assert!(
        state == "running" || (state == "degraded" && !failed.is_empty()),
        "state {state}, failed {failed:?}\n{}",
        r.output
    );
    assert_eq!(
        r.value("RVMSPAWN-SYSTEMD-CREDENTIAL").as_deref(),
        Some(credential),
        "{}",
        r.output
    );
    // READY=1 came from the guest's systemd over the notify socket.
    assert!(r.output.contains("VM reported READY=1."), "{}", r.output);
}

fn check_graceful_stop(r: &BootResult) {
    // logind powered the system off: the kernel's last line, and no forced stop.
    assert!(
        r.output.contains("Asking the guest to power off"),
        "{}",
        r.output
    );
    assert!(!r.output.contains("did not power off"), "{}", r.output);
    assert!(
        r.output.contains("systemd-shutdown[1]: Powering off."),
        "{}",
        r.output
    );
    assert_eq!(r.rc, Some(0), "{}", r.output);
    let ms = |k: &str| r.value(k).and_then(|v| v.parse::<u64>().ok());
    eprintln!(
        "to READY=1: {:?} ms; SIGTERM to exit: {:?} ms",
        ms("HOST-READY-MS"),
        ms("HOST-STOP-MS")
    );
}

#[test]
fn a_trixie_tree_boots_with_directory_and_powers_off_on_sigterm() {
    let r = results().step("directory");
    check_systemd_report(r, "hello-systemd");
    // The --bind reached systemd as fstab.extra: its mount unit is active.
    assert_eq!(
        r.value("RVMSPAWN-SYSTEMD-MOUNT").as_deref(),
        Some("/mnt/share active"),
        "{}",
        r.output
    );
    check_graceful_stop(r);
}

#[test]
fn a_trixie_image_boots_ephemeral_with_image_and_powers_off_on_sigterm() {
    let r = results().step("image");
    let uuid = r.value("HOST-PARTUUID").expect("partuuid");
    let cmdline = r.value("RVMSPAWN-SYSTEMD-CMDLINE").unwrap_or_default();
    assert!(
        cmdline.contains(&format!("root=PARTUUID={uuid}")),
        "rvmspawn found the root partition\n{}",
        r.output
    );
    check_systemd_report(r, "hello-image");
    check_graceful_stop(r);
    // The guest wrote (its root is mounted read-write), the image did not change.
    let before = r.value("HOST-SUPERBLOCK-BEFORE").expect("superblock");
    assert_eq!(
        r.value("HOST-SUPERBLOCK-AFTER"),
        Some(before),
        "{}",
        r.output
    );
    assert!(
        r.output.contains("EXT4-fs (vda1): re-mounted"),
        "{}",
        r.output
    );
}

#[test]
fn systemd_run_exit_status_becomes_rvmspawns() {
    let r = results().step("run-exit");
    assert_eq!(r.rc, Some(7), "{}", r.output);
}
