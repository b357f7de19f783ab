//! A real systemd guest: Debian trixie (systemd 257), built by scripts/systemd-guest.sh,
//! booted by the Debian cloud kernel and the project's initramfs with `-D` (virtio-fs) and with
//! `-x -i` (the GPT disk image through rvmspawn's copy-on-write overlay, root=PARTUUID= found by
//! rvmspawn). The assertions are on what
//! systemd itself reports (rvmspawn-check.service prints it on the console) and on what
//! reaches the host: READY=1 and EXIT_STATUS= over the notify socket, and a clean poweroff
//! after SIGTERM pressed the ACPI power button (systemd-logind's HandlePowerKey=poweroff).

use std::sync::OnceLock;

use rvmspawn_tests::{BootResult, Results};

/// Shell functions for the steps: `writable_tree` gives `$D/root`, a copy of the trixie tree in
/// the test host's memory (`/tmp` there is a tmpfs), `wait_for PATTERN FILE` (at most 300 s),
/// `ms` (a clock in ms). A copy (about 45 s), not an overlay on the test host's read-only 9p
/// view of the repository, through which every file systemd opened went virtiofsd, overlayfs
/// and 9p, all under emulation: the step took 480-530 s in the last runs with the overlay, 332 s
/// with the copy (2026-12-07).
fn helpers() -> String {
    let trixie = rvmspawn_tests::assets().join("trixie");
    format!(
        r#"T='{trixie}'
D=$(mktemp -d)
writable_tree() {{
    mkdir -p "$D/root"
    t0=$(ms)
    cp -a "$T/root/." "$D/root/"
    echo "HOST-COPY-MS=$(($(ms) - t0))"
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

/// Start rvmspawn (through `$WRAP`, if set) in the background on "$@", wait for systemd's
/// report, then SIGTERM: the graceful stop. Prints the times from start to READY=1 and from
/// SIGTERM to the exit. With `SSH=1`, before the SIGTERM, ssh in as root with the key from
/// rvmspawn's status line (vhost-vsock: socat to the CID's port 22; the userspace device:
/// tests/scripts/vsock-mux-proxy.py on its socket). One boot checks several things because a
/// boot of this guest costs over a minute in the emulated test host.
const BOOT_REPORT_STOP: &str = r#"# systemd's own shutdown over virtio-fs takes more than the default 30 s under the test host's
# emulation (about 5 s from a disk): the graceful stop gets longer here.
export RVMSPAWN_STOP_TIMEOUT=240
t0=$(ms)
${WRAP:-} "$RVMSPAWN" --qemu-mem=1G --linux="$KERNEL" --initrd="$INITRD" "$@" >"$D/vm" 2>&1 &
vm=$!
wait_for 'VM reported READY=1' "$D/vm"
echo "HOST-READY-MS=$(($(ms) - t0))"
wait_for RVMSPAWN-SYSTEMD-CHECKED "$D/vm"
if [ -n "${SSH:-}" ]; then
    line=$(grep -a 'SSH into the guest' "$D/vm" | head -n1)
    echo "HOST-SSH-LINE=$line"
    key=$(echo "$line" | sed -n 's/.*ssh -i \([^ ]*\) root@.*/\1/p')
    host=$(echo "$line" | sed -n 's/.* root@\([^ ]*\).*/\1/p')
    case $host in
        vsock/*) proxy="socat - VSOCK-CONNECT:${host#vsock/}:22" ;;
        vsock-mux/*) proxy="python3 $PWD/tests/scripts/vsock-mux-proxy.py ${host#vsock-mux/} 22" ;;
    esac
    timeout -s KILL 120 ssh -i "$key" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ProxyCommand="$proxy" root@guest \
        'echo "RVMSPAWN-SSH=$(id -un) $(cat /proc/sys/kernel/hostname)"' </dev/null
    echo "HOST-SSH-RC=$?"
fi
t1=$(ms)
kill -TERM $vm
wait $vm
rc=$?
echo "HOST-STOP-MS=$(($(ms) - t1))"
cat "$D/vm"
"#;

/// `$NO_VHOST CMD...` runs CMD in a mount namespace whose `/dev` holds only `kvm`, `null`,
/// `zero` and `urandom`, so rvmspawn finds no vhost-vsock and serves vsock itself (as in
/// tests/tests/vsock.rs).
const NO_VHOST: &str = rvmspawn_tests::no_vhost_sh!("");

/// What the host's journal files (`$D/guest.journal`, or those in `$D/journal`) hold from the
/// guest's rvmspawn-check, one `HOST-JOURNAL=` line each.
const JOURNAL_REPORT: &str = r#"for f in "$D"/guest.journal "$D"/journal/*.journal; do
    [ -f "$f" ] || continue
    echo "HOST-JOURNAL-FILE=${f#$D/}"
    journalctl --file "$f" -t rvmspawn-check -o cat | sed 's/^/HOST-JOURNAL=/'
done
"#;

fn results() -> &'static Results {
    static RESULTS: OnceLock<Results> = OnceLock::new();
    RESULTS.get_or_init(|| {
        let h = helpers();
        // The -D boot alone takes about 5 minutes in the emulated test host (every file systemd
        // opens goes through virtiofsd, itself emulated); the -i boots about 90 s each.
        rvmspawn_tests::Batch::new()
            .timeout_secs(2400)
            .step(
                // -D with a credential and a --bind (fstab.extra).
                "directory",
                format!(
                    r#"{h}writable_tree
mkdir -p "$D/share" && echo shared-file >"$D/share/f"
set -- -D "$D/root" --set-credential=rvmtest.value:hello-systemd --bind="$D/share:/mnt/share" \
    systemd.wants=rvmspawn-check.service
{BOOT_REPORT_STOP}rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // -x -i: the GPT image as it is in the repository (which the test host sees
                // read-only), its writes in rvmspawn's copy-on-write overlay. The image's
                // ext4 superblock (which a read-write mount updates) is the same afterwards.
                // ssh over vhost-vsock with the key rvmspawn made and passed (its status line
                // names the key and the address), and --forward-journal into a file: a line
                // the guest logs is in the host's journal file, which journal-remote wrote.
                "image",
                format!(
                    r#"{h}sb() {{ dd if="$T/disk.raw" bs=4096 skip=256 count=1 status=none | md5sum | cut -d' ' -f1; }}
echo "HOST-SUPERBLOCK-BEFORE=$(sb)"
echo "HOST-PARTUUID=$(cat "$T/partuuid")"
set -- -x -i "$T/disk.raw" --set-credential=rvmtest.value:hello-image \
    --forward-journal="$D/guest.journal" systemd.wants=rvmspawn-check.service
SSH=1
{BOOT_REPORT_STOP}echo "HOST-SUPERBLOCK-AFTER=$(sb)"
{JOURNAL_REPORT}rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // The same through rvmspawn's userspace vsock device (no /dev/vhost-vsock): ssh
                // as `ssh root@vsock-mux/PATH` does it with systemd-ssh-proxy, and the journal
                // into a directory.
                "user",
                format!(
                    r#"{h}{NO_VHOST}export XDG_RUNTIME_DIR=$D/run
mkdir "$D/journal"
set -- -x -i "$T/disk.raw" --forward-journal="$D/journal" \
    --set-credential=rvmtest.value:hello-user systemd.wants=rvmspawn-check.service
WRAP=$NO_VHOST
SSH=1
{BOOT_REPORT_STOP}{JOURNAL_REPORT}rm -rf "$D"
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
        r.value("RVMSPAWN-SYSTEMD-CREDENTIAL"),
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
        r.value("RVMSPAWN-SYSTEMD-MOUNT"),
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
fn ssh_reaches_the_guest_with_the_passed_key_over_vhost_vsock_and_the_userspace_device() {
    for (step, want) in [("image", "root@vsock/"), ("user", "root@vsock-mux/")] {
        let r = results().step(step);
        let line = r.value("HOST-SSH-LINE").unwrap_or_default();
        assert!(line.contains(want), "{step}: {line}\n{}", r.output);
        assert_eq!(r.value("HOST-SSH-RC"), Some("0"), "{step}\n{}", r.output);
        assert_eq!(
            r.value("RVMSPAWN-SSH"),
            Some("root rvmspawn-trixie"),
            "{step}\n{}",
            r.output
        );
        assert_eq!(r.rc, Some(0), "{step}\n{}", r.output);
    }
}

#[test]
fn forward_journal_puts_the_guests_journal_in_a_host_file() {
    for (step, mark, file) in [
        ("image", "hello-image", "guest.journal"),
        ("user", "hello-user", "journal/"),
    ] {
        let r = results().step(step);
        check_systemd_report(r, mark);
        assert!(
            r.value("HOST-JOURNAL-FILE")
                .is_some_and(|f| f.starts_with(file)),
            "{step}: no journal file {file}\n{}",
            r.output
        );
        assert!(
            r.output
                .lines()
                .any(|l| l.trim_end() == format!("HOST-JOURNAL=RVMSPAWN-JOURNAL-MARK={mark}")),
            "{step}: the guest's line is not in the host's journal\n{}",
            r.output
        );
        check_graceful_stop(r);
    }
}

#[test]
fn systemd_run_exit_status_becomes_rvmspawns() {
    let r = results().step("run-exit");
    assert_eq!(r.rc, Some(7), "{}", r.output);
}
