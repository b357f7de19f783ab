//! vsock through vhost-vsock, the notify socket and the guest's exit status, checked from both
//! sides: the guest test program (`guest-tools/`, `/bin/rvmspawn-guest` in the initramfs) reads
//! the notify address from its SMBIOS credential, reports READY=1 and EXIT_STATUS=42, and moves
//! 64 MiB each way with a SHA-256 on both ends; the host side runs the same program.
//!
//! Needs `/dev/vhost-vsock` (the test host has it). The userspace vsock device is not there
//! yet, so there is no run with vhost-vsock forced off.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use rvmspawn_tests::{Batch, BootResult};

/// SHA-256 of the first 64 MiB of the guest program's stream with its default seed.
const STREAM_64M: &str =
    "67108864 aabcff14084e83a052a50e88d22a20ece85a9594c1e171c1564a308c5dc9d45c";

fn results() -> &'static BTreeMap<String, BootResult> {
    static RESULTS: OnceLock<BTreeMap<String, BootResult>> = OnceLock::new();
    RESULTS.get_or_init(|| {
        Batch::new()
            .step(
                "notify-and-streams",
                // The host's receiver listens first; its sender starts once the guest listens
                // (before that the guest's CID does not exist yet).
                r#"G=$(dirname "$INITRD")/rvmspawn-guest; D=$(mktemp -d)
"$G" stream-recv --port 5001 --bytes 64M --timeout 200 >"$D/r" 2>&1 &
timeout -s KILL 280 "$RVMSPAWN" -q --vsock-cid=1234 --linux="$KERNEL" --initrd="$INITRD" \
    rvmspawn.vsockcid=1 rvmspawn.vsock-recv=5000:64M rvmspawn.vsock-send=2:5001:64M rvmspawn.notify=42 >"$D/vm" 2>&1 &
vm=$!
i=0
until grep -q '^RVMSPAWN-STREAM-LISTENING=' "$D/vm" || [ $i -ge 240 ]; do sleep 0.5; i=$((i+1)); done
"$G" stream-send --cid 1234 --port 5000 --bytes 64M --seed 2 --timeout 150 >"$D/s" 2>&1
wait $vm
rc=$?
wait
cat "$D/vm"
sed 's/^/HOST-/' "$D/r" "$D/s"
rm -rf "$D"
exit $rc"#,
            )
            .step(
                // Without --vsock-cid the CID is derived from the name; READY=1 is reported.
                "default-cid",
                r#"timeout -s KILL 120 "$RVMSPAWN" -M vsockname --linux="$KERNEL" --initrd="$INITRD" \
    rvmspawn.vsockcid=1 rvmspawn.notify=ready"#,
            )
            .step(
                // vsock keeps working after a guest reboot (the same vhost device is set up
                // again for the new machine), and SIGTERM ends the run with the guest's status.
                "reboot",
                r#"D=$(mktemp -d)
"$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" rvmspawn.action=reboot rvmspawn.notify=42 rvmspawn.vsockcid=1 >"$D/vm" 2>&1 &
vm=$!
i=0
while [ "$(grep -c '^RVMSPAWN-NOTIFY=ok' "$D/vm")" -lt 2 ] && [ $i -lt 200 ]; do sleep 0.5; i=$((i+1)); done
kill -TERM $vm
wait $vm
rc=$?
cat "$D/vm"
rm -rf "$D"
exit $rc"#,
            )
            .step(
                "no-vsock",
                r#"timeout -s KILL 120 "$RVMSPAWN" -q --qemu-vsock=no --linux="$KERNEL" --initrd="$INITRD" \
    rvmspawn.vsockcid=1 rvmspawn.notify=42"#,
            )
            .run()
    })
}

fn get(name: &str) -> &'static BootResult {
    results()
        .get(name)
        .unwrap_or_else(|| panic!("boot '{name}' did not run; see the batch output above"))
}

#[test]
fn guest_exit_status_is_the_exit_code() {
    let r = get("notify-and-streams");
    assert_eq!(r.value("RVMSPAWN-NOTIFY"), Some("ok"), "{}", r.output);
    assert!(
        r.value("RVMSPAWN-NOTIFY-ADDR")
            .is_some_and(|a| a.starts_with("vsock-stream:2:")),
        "{}",
        r.output
    );
    assert_eq!(r.rc, Some(42), "{}", r.output);
}

#[test]
fn the_cid_asked_for_is_the_guests() {
    let r = get("notify-and-streams");
    assert_eq!(r.value("RVMSPAWN-VSOCK-CID"), Some("1234"), "{}", r.output);
}

#[test]
fn sixty_four_mib_each_way_arrive_intact() {
    let r = get("notify-and-streams");
    // Host to guest: what the host sent (seed 2) is what the guest received.
    let sent = r.value("HOST-RVMSPAWN-STREAM-SENT").expect("host sent");
    assert!(sent.starts_with("67108864 "), "{}", r.output);
    assert_eq!(r.value("RVMSPAWN-STREAM-RECV"), Some(sent), "{}", r.output);
    // Guest to host.
    assert_eq!(
        r.value("RVMSPAWN-STREAM-SENT"),
        Some(STREAM_64M),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("HOST-RVMSPAWN-STREAM-RECV"),
        Some(STREAM_64M),
        "{}",
        r.output
    );
}

#[test]
fn default_cid_and_ready() {
    let r = get("default-cid");
    assert_eq!(
        r.rc,
        Some(0),
        "no EXIT_STATUS: a clean power-off is 0\n{}",
        r.output
    );
    let cid: u64 = r
        .value("RVMSPAWN-VSOCK-CID")
        .and_then(|v| v.parse().ok())
        .expect("a numeric CID");
    assert!((3..=0xffff_fffd).contains(&cid), "{cid}");
    assert!(r.output.contains("VM reported READY=1."), "{}", r.output);
}

#[test]
fn no_vsock_means_no_device_and_exit_zero() {
    let r = get("no-vsock");
    assert_eq!(
        r.value("RVMSPAWN-VSOCK-CID"),
        Some("missing"),
        "{}",
        r.output
    );
    assert_eq!(
        r.value("RVMSPAWN-NOTIFY-ADDR"),
        Some("missing"),
        "{}",
        r.output
    );
    assert_eq!(r.rc, Some(0), "{}", r.output);
}

#[test]
fn vsock_survives_a_guest_reboot() {
    let r = get("reboot");
    assert_eq!(r.count_lines("RVMSPAWN-NOTIFY=ok"), 2, "{}", r.output);
    let cids: Vec<&str> = r
        .output
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("RVMSPAWN-VSOCK-CID="))
        .collect();
    assert_eq!(cids.len(), 2, "{}", r.output);
    assert_eq!(cids[0], cids[1], "the same CID after the reboot");
    assert_eq!(r.rc, Some(42), "{}", r.output);
}
