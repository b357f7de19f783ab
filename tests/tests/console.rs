//! The guest's console: virtio-console (`hvc0`) by default, the UART with
//! `--console-transport=serial`, and the `--console=` modes, checked on what the guest itself
//! reports (guest-init's rvmspawn.console/bulk/read/resize lines) and, for typed input and
//! window sizes, through a pseudo-terminal driven by tests/scripts/console-pty.py.

use std::sync::OnceLock;

use rvmspawn_tests::{Batch, BootResult, Results};

const T: &str = "timeout -s KILL 180";

/// A step that boots with ARGS, keeps the guest's output in a file, prints its RVMSPAWN-*
/// lines (not the bulk text) and, for a bulk run, HOST-BULK-MD5: the md5 of the KIB*1024 bytes
/// after the guest's RVMSPAWN-BULK-BEGIN line, as they reached rvmspawn's standard output.
fn bulk_step(args: &str, kib: u32) -> String {
    format!(
        r#"out=$(mktemp)
{T} "$RVMSPAWN" -q --tpm=no --qemu-vsock=no --linux="$KERNEL" --initrd="$INITRD" {args} quiet rvmspawn.console=1 rvmspawn.bulk={kib} >"$out"
rc=$?
grep -a '^RVMSPAWN-' "$out" | grep -av '^RVMSPAWN-BULK-LINE'
python3 - "$out" {kib} <<'PY'
import hashlib, sys
data = open(sys.argv[1], "rb").read()
n = int(sys.argv[2]) * 1024
begin = b"RVMSPAWN-BULK-BEGIN\n"
at = data.find(begin)
if at >= 0:
    body = data[at + len(begin):at + len(begin) + n]
    print("HOST-BULK-BYTES=%d" % len(body))
    print("HOST-BULK-MD5=" + hashlib.md5(body).hexdigest())
    print("HOST-BULK-TAIL-OK=%d" % data[at + len(begin) + n:].startswith(b"\nRVMSPAWN-BULK-END\n"))
PY
rm -f "$out"
exit $rc"#
    )
}

fn results() -> &'static Results {
    static RESULTS: OnceLock<Results> = OnceLock::new();
    RESULTS.get_or_init(|| {
        Batch::new()
            .step("hvc0", bulk_step("", 1024))
            .step("serial", bulk_step("--console-transport=serial", 64))
            .step(
                "headless",
                format!(
                    r#"out=$(mktemp)
{T} "$RVMSPAWN" -q --tpm=no --console=headless --linux="$KERNEL" --initrd="$INITRD" rvmspawn.notify=7 >"$out" 2>&1
rc=$?
echo "HOST-OUTPUT-BYTES=$(wc -c <"$out")"
head -c 2000 "$out"
rm -f "$out"
exit $rc"#
                ),
            )
            .step(
                "pty",
                format!(
                    r#"TERM=vt220 {T} python3 tests/scripts/console-pty.py interactive "$RVMSPAWN" -q --tpm=no --qemu-vsock=no --linux="$KERNEL" --initrd="$INITRD" quiet rvmspawn.console=1 rvmspawn.read=500 rvmspawn.resize=1 rvmspawn.action=hang"#
                ),
            )
            .step(
                "native",
                format!(
                    r#"{T} python3 tests/scripts/console-pty.py native "$RVMSPAWN" --tpm=no --qemu-vsock=no --console=native --linux="$KERNEL" --initrd="$INITRD" quiet rvmspawn.read=3 rvmspawn.action=hang"#
                ),
            )
            .step(
                // Output only: stdin is not read (a pipe that would deliver Ctrl-] three times
                // stays unread), and SIGINT stops the VM.
                "read-only",
                r#"out=$(mktemp)
printf '\035\035\035' | "$RVMSPAWN" -q --tpm=no --qemu-vsock=no --console=read-only --linux="$KERNEL" --initrd="$INITRD" quiet rvmspawn.action=hang >"$out" 2>&1 &
pid=$!
i=0
while ! grep -q '^RVMSPAWN-GUEST-INIT' "$out" && [ $i -lt 1200 ] && kill -0 $pid 2>/dev/null; do sleep 0.1; i=$((i+1)); done
echo "HOST-ALIVE-AT-INIT=$(kill -0 $pid 2>/dev/null && echo yes || echo no)"
kill -INT $pid
wait $pid
rc=$?
cat "$out"
rm -f "$out"
exit $rc"#,
            )
            .run()
    })
}

fn assert_bulk_intact(r: &BootResult, kib: usize) {
    assert_eq!(
        r.value("HOST-BULK-BYTES"),
        Some((kib * 1024).to_string().as_str()),
        "{}",
        r.output
    );
    let guest = r.value("RVMSPAWN-BULK-MD5").expect("the guest's md5");
    assert_eq!(r.value("HOST-BULK-MD5"), Some(guest), "{}", r.output);
    assert_eq!(r.value("HOST-BULK-TAIL-OK"), Some("1"), "{}", r.output);
}

#[test]
fn by_default_the_console_is_hvc0_and_a_mebibyte_arrives_byte_exact() {
    let r = results().step("hvc0");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    assert_eq!(r.value("RVMSPAWN-CONSOLES"), Some("hvc0"), "{}", r.output);
    let cmdline = r.value("RVMSPAWN-CMDLINE").expect("cmdline");
    assert!(cmdline.starts_with("console=hvc0 "), "{cmdline}");
    assert_bulk_intact(r, 1024);
}

#[test]
fn the_serial_transport_is_the_uart() {
    let r = results().step("serial");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    assert_eq!(r.value("RVMSPAWN-CONSOLES"), Some("ttyS0"), "{}", r.output);
    let cmdline = r.value("RVMSPAWN-CMDLINE").expect("cmdline");
    assert!(cmdline.starts_with("console=ttyS0 "), "{cmdline}");
    assert_bulk_intact(r, 64);
}

#[test]
fn headless_prints_nothing_and_still_reports_the_exit_status() {
    let r = results().step("headless");
    assert_eq!(r.rc, Some(7), "{}", r.output);
    assert_eq!(r.value("HOST-OUTPUT-BYTES"), Some("0"), "{}", r.output);
}

#[test]
fn typed_input_arrives_in_order_the_window_size_follows_and_ctrl_bracket_ends_it() {
    let r = results().step("pty");
    assert_eq!(r.value("HOST-RC"), Some("0"), "{}", r.output);
    assert_eq!(r.value("RVMSPAWN-CONSOLES"), Some("hvc0"), "{}", r.output);
    // The terminal's type, from $TERM, as vmspawn passes it.
    let cmdline = r.value("RVMSPAWN-CMDLINE").expect("cmdline");
    assert!(
        cmdline.starts_with("console=hvc0 TERM=vt220 systemd.tty.term.hvc0=vt220 "),
        "{cmdline}"
    );
    // The pty's size (100 columns, 30 rows) is the guest's, and follows a resize.
    assert_eq!(
        r.value("RVMSPAWN-STTY-SIZE"),
        Some("30 100"),
        "{}",
        r.output
    );
    let typed = r.value("HOST-TYPED-MD5").expect("typed");
    assert_eq!(r.value("RVMSPAWN-READ-MD5"), Some(typed), "{}", r.output);
    assert_eq!(
        r.value("RVMSPAWN-RESIZE-READY"),
        Some("30 100"),
        "{}",
        r.output
    );
    assert_eq!(r.value("RVMSPAWN-RESIZE"), Some("40 120"), "{}", r.output);
}

#[test]
fn native_sends_ctrl_a_a_as_ctrl_a_and_ends_on_ctrl_a_x() {
    let r = results().step("native");
    assert_eq!(r.value("HOST-RC"), Some("0"), "{}", r.output);
    assert!(
        r.output.contains("Press Ctrl-a x to kill VM."),
        "{}",
        r.output
    );
    // Ctrl-a a arrived as one Ctrl-a, Ctrl-] as itself.
    assert_eq!(r.value("RVMSPAWN-READ-HEX"), Some("011d7a"), "{}", r.output);
}

#[test]
fn read_only_does_not_read_input_and_stops_on_sigint() {
    let r = results().step("read-only");
    assert_eq!(r.value("HOST-ALIVE-AT-INIT"), Some("yes"), "{}", r.output);
    assert_eq!(r.count_lines("RVMSPAWN-GUEST-INIT"), 1, "{}", r.output);
    assert_eq!(r.rc, Some(0), "{}", r.output);
}
