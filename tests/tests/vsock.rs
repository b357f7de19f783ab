//! vsock through vhost-vsock, the notify socket and the guest's exit status, checked from both
//! sides: the guest test program (`guest-tools/`, `/bin/rvmspawn-guest` in the initramfs) reads
//! the notify address from its SMBIOS credential, reports READY=1 and EXIT_STATUS=42, and moves
//! 64 MiB each way with a SHA-256 on both ends; the host side runs the same program.
//!
//! Needs `/dev/vhost-vsock` (the test host has it). The same checks run again with vhost-vsock
//! out of sight (rvmspawn in a mount namespace whose `/dev` has no `vhost-vsock`, as on a host
//! without the module), where rvmspawn serves vsock itself and its host side is Unix sockets.

use std::sync::OnceLock;

use rvmspawn_tests::{Batch, BootResult, Results, assert_streams_intact, vmspawn_cid};

/// `$NO_VHOST CMD...` runs CMD in a mount namespace whose `/dev` holds only `kvm`, `null`,
/// `zero` and `urandom`, so rvmspawn finds no vhost-vsock. It execs all the way down, so the
/// PID of `$NO_VHOST rvmspawn` is rvmspawn's.
const NO_VHOST: &str = rvmspawn_tests::no_vhost_sh!("");

/// After starting rvmspawn in the background (output in `$D/vm`) with a guest that notifies
/// and reboots: wait for the second boot's notification, SIGTERM rvmspawn, `rc` = its status.
const SECOND_BOOT_THEN_TERM: &str = r#"vm=$!
i=0
while [ "$(grep -c '^RVMSPAWN-NOTIFY=ok' "$D/vm")" -lt 2 ] && [ $i -lt 200 ]; do sleep 0.5; i=$((i+1)); done
kill -TERM $vm
wait $vm
rc=$?
"#;

/// A supervisor for rvmspawn: receives on `$D/notify` what rvmspawn sends its
/// `$NOTIFY_SOCKET` and writes `SUPERVISOR-MESSAGE=N` (counting from 1), then each of the
/// message's lines as `SUPERVISOR: LINE`, to `$D/sup`; `$sup` is its PID. Returns once it is
/// bound (at most 10 s).
const SUPERVISOR: &str = r#"python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
open(sys.argv[1] + ".bound", "w").close()
n = 0
while True:
    data = s.recv(4096).decode()
    n += 1
    print("SUPERVISOR-MESSAGE=%d" % n, flush=True)
    for line in data.split("\n"):
        print("SUPERVISOR: " + line, flush=True)
' "$D/notify" >"$D/sup" 2>&1 &
sup=$!
i=0
until [ -e "$D/notify.bound" ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
"#;

fn results() -> &'static Results {
    static RESULTS: OnceLock<Results> = OnceLock::new();
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
                // Without --vsock-cid the CID is derived from the name; READY=1 is reported,
                // on the console and to our own supervisor.
                "default-cid",
                r#"D=$(mktemp -d)
"#.to_owned()
                    + SUPERVISOR
                    + r#"NOTIFY_SOCKET=$D/notify timeout -s KILL 120 "$RVMSPAWN" -M vsockname --linux="$KERNEL" --initrd="$INITRD" \
    rvmspawn.vsockcid=1 rvmspawn.notify=ready
rc=$?
kill $sup
cat "$D/sup"
rm -rf "$D"
exit $rc"#,
            )
            .step(
                // vsock keeps working after a guest reboot (the same vhost device is set up
                // again for the new machine), and SIGTERM ends the run with the guest's status.
                "reboot",
                r#"D=$(mktemp -d)
# A guest rebooting in a loop has no time to answer the power button: the immediate stop.
RVMSPAWN_STOP_TIMEOUT=0 "$RVMSPAWN" -q --linux="$KERNEL" --initrd="$INITRD" rvmspawn.action=reboot rvmspawn.notify=42 rvmspawn.vsockcid=1 >"$D/vm" 2>&1 &
"#.to_owned()
                    + SECOND_BOOT_THEN_TERM
                    + r#"cat "$D/vm"
rm -rf "$D"
exit $rc"#,
            )
            .step(
                // The userspace device: the same transfers and exit status, the host side
                // over the run directory's Unix sockets. The guest's connection to host port
                // 5001 is refused (and retried) until the host's receiver listens there.
                "user-notify-and-streams",
                r#"G=$(dirname "$INITRD")/rvmspawn-guest; D=$(mktemp -d); R=$D/run/rvmspawn/uvsock
mkdir "$D/run"
"#.to_owned()
                    + NO_VHOST
                    + r#"XDG_RUNTIME_DIR=$D/run timeout -s KILL 280 $NO_VHOST "$RVMSPAWN" -M uvsock --vsock-cid=1234 \
    --linux="$KERNEL" --initrd="$INITRD" \
    rvmspawn.vsockcid=1 rvmspawn.vsock-recv=5000:64M rvmspawn.vsock-send=2:5001:64M rvmspawn.notify=42 >"$D/vm" 2>&1 &
vm=$!
i=0
until [ -S "$R/vsock" ] || [ $i -ge 400 ]; do sleep 0.1; i=$((i+1)); done
"$G" stream-recv --unix "$R/vsock_5001" --bytes 64M --timeout 200 >"$D/r" 2>&1 &
i=0
until grep -q '^RVMSPAWN-STREAM-LISTENING=' "$D/vm" || [ $i -ge 240 ]; do sleep 0.5; i=$((i+1)); done
"$G" stream-send --unix "$R/vsock" --port 5000 --bytes 64M --seed 2 --timeout 150 >"$D/s" 2>&1
wait $vm
rc=$?
wait
cat "$D/vm"
sed 's/^/HOST-/' "$D/r" "$D/s"
echo "RUN-DIR-ENTRIES=$(ls -A "$D/run/rvmspawn" | wc -l)"
rm -rf "$D"
exit $rc"#,
            )
            .step(
                // The userspace device survives a reboot too. With --notify-ready=no rvmspawn
                // tells its supervisor READY=1 itself at start and not again for the guest.
                "user-reboot-notify-ready-no",
                r#"D=$(mktemp -d); mkdir "$D/run"
"#.to_owned()
                    + NO_VHOST
                    + SUPERVISOR
                    + r#"NOTIFY_SOCKET=$D/notify XDG_RUNTIME_DIR=$D/run RVMSPAWN_STOP_TIMEOUT=0 $NO_VHOST "$RVMSPAWN" -q --notify-ready=no \
    --linux="$KERNEL" --initrd="$INITRD" rvmspawn.action=reboot rvmspawn.notify=42 rvmspawn.vsockcid=1 >"$D/vm" 2>&1 &
"#
                    + SECOND_BOOT_THEN_TERM
                    + r#"kill $sup
cat "$D/vm"; echo; cat "$D/sup"
echo "RUN-DIR-ENTRIES=$(ls -A "$D/run/rvmspawn" | wc -l)"
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

#[test]
fn guest_exit_status_is_the_exit_code() {
    let r = results().step("notify-and-streams");
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
    let r = results().step("notify-and-streams");
    assert_eq!(r.value("RVMSPAWN-VSOCK-CID"), Some("1234"), "{}", r.output);
}

/// The guest notified on both boots, with the same (real) CID, and SIGTERM then ended the run
/// with the guest's 42.
fn assert_rebooted_with_same_cid(r: &BootResult) {
    assert_eq!(r.count_lines("RVMSPAWN-NOTIFY=ok"), 2, "{}", r.output);
    let cids: Vec<&str> = r
        .output
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("RVMSPAWN-VSOCK-CID="))
        .collect();
    assert_eq!(cids.len(), 2, "{}", r.output);
    assert_eq!(cids[0], cids[1], "the same CID after the reboot");
    assert_ne!(cids[0], "missing", "{}", r.output);
    assert_eq!(r.rc, Some(42), "{}", r.output);
}

#[test]
fn sixty_four_mib_each_way_arrive_intact() {
    assert_streams_intact(results().step("notify-and-streams"));
}

#[test]
fn default_cid_and_ready() {
    let r = results().step("default-cid");
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
    // vmspawn's derivation from the name (computed here), as the CID was free.
    assert_eq!(cid, vmspawn_cid("vsockname"), "{}", r.output);
    assert!(r.output.contains("VM reported READY=1."), "{}", r.output);
}

/// The number of the supervisor message (`SUPERVISOR-MESSAGE=N`, from 1) that carried `line`
/// first, or `None` if it never came.
fn supervisor_message_with(r: &BootResult, line: &str) -> Option<u32> {
    let want = format!("SUPERVISOR: {line}");
    let mut message = 0;
    for l in r.output.lines().map(str::trim_end) {
        if let Some(n) = l.strip_prefix("SUPERVISOR-MESSAGE=") {
            message = n.parse().expect("a message number");
        } else if l == want {
            return Some(message);
        }
    }
    None
}

#[test]
fn no_vsock_means_no_device_and_exit_zero() {
    let r = results().step("no-vsock");
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
    assert_rebooted_with_same_cid(results().step("reboot"));
}

#[test]
fn supervisor_hears_started_and_the_guests_ready() {
    let r = results().step("default-cid");
    assert!(
        r.output.contains("SUPERVISOR: STATUS=VM started."),
        "{}",
        r.output
    );
    assert!(
        r.output.contains("SUPERVISOR: X_VMSPAWN_LEADER_PID="),
        "{}",
        r.output
    );
    assert_eq!(r.count_lines("SUPERVISOR: READY=1"), 1, "{}", r.output);
    // The guest's READY=1, forwarded, comes after rvmspawn's start message.
    let ready = supervisor_message_with(r, "READY=1").expect("READY=1");
    let started = supervisor_message_with(r, "STATUS=VM started.").expect("STATUS=VM started.");
    assert!(started >= 1 && ready > started, "{}", r.output);
}

#[test]
fn userspace_vsock_exit_status_cid_and_streams() {
    let r = results().step("user-notify-and-streams");
    assert!(
        r.output
            .contains("vsock is served by rvmspawn: guest CID 1234"),
        "{}",
        r.output
    );
    assert_eq!(r.value("RVMSPAWN-NOTIFY"), Some("ok"), "{}", r.output);
    assert_eq!(r.rc, Some(42), "{}", r.output);
    assert_eq!(r.value("RVMSPAWN-VSOCK-CID"), Some("1234"), "{}", r.output);
    assert_streams_intact(r);
    // The run's directory and its sockets are gone after the run.
    assert_eq!(r.value("RUN-DIR-ENTRIES"), Some("0"), "{}", r.output);
}

#[test]
fn userspace_vsock_survives_a_reboot_and_notify_ready_no() {
    let r = results().step("user-reboot-notify-ready-no");
    assert_rebooted_with_same_cid(r);
    // READY=1 once, from rvmspawn at start, although the guest sent it on both boots...
    assert_eq!(r.count_lines("SUPERVISOR: READY=1"), 1, "{}", r.output);
    // ...at start: in the same message as STATUS=VM started. or an earlier one, never after.
    let ready = supervisor_message_with(r, "READY=1").expect("READY=1");
    let started = supervisor_message_with(r, "STATUS=VM started.").expect("STATUS=VM started.");
    assert!(ready >= 1 && ready <= started, "{}", r.output);
    assert_eq!(r.value("RUN-DIR-ENTRIES"), Some("0"), "{}", r.output);
}
