//! The graphical console (`--console=gui`, `--qemu-gui`), under Xvfb in the test host: the
//! guest (Debian's generic kernel, whose virtio-gpu DRM driver and fbcon the cloud kernel
//! lacks; assets under `gui/`) draws a known picture into /dev/fb0 and reads its input
//! devices; the tests compare an `xwd` screenshot of rvmspawn's window against the picture,
//! send keys and a click with `xdotool`, close the window, and boot OVMF with the window.
//! `tests/scripts/x11.py` finds the window, reads pixels of a screenshot and closes the window.

use std::sync::OnceLock;

use rvmspawn_tests::{BootResult, Results};

/// Shell for every step: an Xvfb of the step's own (display :N, N from the step), torn down
/// on exit; `wait_for PATTERN FILE [TENTHS]` waits for a line; `window` finds rvmspawn's
/// window for the machine `gui`; `shot POINTS...` prints the pixels of a fresh screenshot.
const PRELUDE: &str = r#"D=$(mktemp -d)
X=/usr/bin/python3
export DISPLAY=:$DNUM
Xvfb ":$DNUM" -screen 0 1600x1200x24 -nolisten tcp >"$D/xvfb.log" 2>&1 &
xvfb=$!
trap 'kill $xvfb 2>/dev/null; wait $xvfb 2>/dev/null; rm -rf "$D"' EXIT
i=0
until [ -S "/tmp/.X11-unix/X$DNUM" ] || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done
wait_for() { # PATTERN FILE [TENTHS]
    i=0
    until grep -aq "$1" "$2" || [ $i -ge "${3:-1800}" ] || ! kill -0 $vm 2>/dev/null; do sleep 0.1; i=$((i+1)); done
}
window() { "$X" tests/scripts/x11.py wait-window "Virtual Machine gui" 60; }
shot() { # POINTS...
    xwd -id "$wid" -silent >"$D/shot.xwd" && "$X" tests/scripts/x11.py xwd-pixels "$D/shot.xwd" "$@"
}
# The picture's quadrants, sampled a quarter of the way in from each corner of MODE (WxH).
quadrants() { # MODE
    w=${1%x*} h=${1#*x}
    echo "$((w / 4)),$((h / 4)) $((3 * w / 4)),$((h / 4)) $((w / 4)),$((3 * h / 4)) $((3 * w / 4)),$((3 * h / 4))"
}
# Up to 20 screenshots until the picture is there (the window shows it after the guest's
# flush reaches it).
picture() { # MODE
    want="ff0000 00ff00 0000ff ffffff"
    n=0
    while :; do
        got=$(shot $(quadrants "$1"))
        n=$((n + 1))
        [ "$got" = "$want" ] || [ $n -ge 20 ] && break
        sleep 0.25
    done
    echo "HOST-PIXELS=$got"
}
"#;

const T: &str = "timeout -s KILL 300";

fn gui_assets() -> (String, String) {
    let gui = rvmspawn_tests::assets().join("gui");
    (
        gui.join("vmlinuz").display().to_string(),
        gui.join("initramfs.cpio.gz").display().to_string(),
    )
}

fn results() -> &'static Results {
    static RESULTS: OnceLock<Results> = OnceLock::new();
    RESULTS.get_or_init(|| {
        let (kernel, initrd) = gui_assets();
        rvmspawn_tests::Batch::new()
            .step(
                // The picture at a mode that is not the display's preferred one (the window
                // follows the guest's mode), then three keys and a click.
                "direct",
                format!(
                    r#"DNUM=11
{PRELUDE}
{T} "$RVMSPAWN" -q --tpm=no --console=gui -M gui --linux='{kernel}' --initrd='{initrd}' \
    console=tty0 console=ttyS0 video=Virtual-1:1024x768 rvmspawn.fb=1 rvmspawn.input=3 >"$D/vm" 2>&1 &
vm=$!
wait_for 'RVMSPAWN-FB-DRAWN\|RVMSPAWN-FB-ERROR' "$D/vm"
wid=$(window)
mode=$(sed -n 's/^RVMSPAWN-FB-MODE=//p' "$D/vm" | tr -d '\r')
picture "$mode"
echo "HOST-WINDOW-SIZE=$("$X" tests/scripts/x11.py size "$wid")"
wait_for 'RVMSPAWN-INPUT-READY' "$D/vm"
xdotool mousemove --window "$wid" 5 5
xdotool windowfocus --sync "$wid"
xdotool key --delay 50 a b c
xdotool mousemove --window "$wid" 256 600 click 1
wait $vm
echo "HOST-RC=$?"
cat "$D/vm""#
                ),
            )
            .step(
                // Closing the window ends the VM at once, as Ctrl-] three times does.
                "close",
                format!(
                    r#"DNUM=12
{PRELUDE}
ms() {{ echo $(($(date +%s%N) / 1000000)); }}
{T} "$RVMSPAWN" --tpm=no --console=gui -M gui --linux='{kernel}' --initrd='{initrd}' \
    console=ttyS0 rvmspawn.action=hang >"$D/vm" 2>&1 &
vm=$!
wait_for 'RVMSPAWN-ACTION=hang' "$D/vm"
wid=$(window)
t0=$(ms)
"$X" tests/scripts/x11.py close "$wid"
wait $vm
echo "HOST-RC=$?"
echo "HOST-CLOSE-MS=$(($(ms) - t0))"
cat "$D/vm""#
                ),
            )
            .step(
                // Through UEFI: OVMF's VirtioGpuDxe draws into the window before Linux (a UKI
                // of the same kernel, through fw_cfg) takes the device over and draws the
                // picture.
                "uefi",
                format!(
                    r#"KERNEL='{kernel}' INITRD='{initrd}'
# Embedded: bookworm's systemd-stub (252) does not read the SMBIOS extra command line.
UKI_CMDLINE='console=tty0 console=ttyS0 rvmspawn.fb=1 rvmspawn.action=hang'
{uki}
U=$D
DNUM=13
{PRELUDE}
trap 'kill $xvfb 2>/dev/null; wait $xvfb 2>/dev/null; rm -rf "$D" "$U"' EXIT
{T} "$RVMSPAWN" -q --tpm=no --console=gui -M gui --linux="$U/uki.efi" --firmware=uefi \
    >"$D/vm" 2>&1 &
vm=$!
wid=$(window)
# The firmware's screen: any pixel that is not black, before Linux has started.
"$X" tests/scripts/x11.py wait-content "$wid" 240 >"$D/fw"
echo "HOST-LINUX-STARTED-BEFORE=$(grep -aq 'RVMSPAWN-GUEST-INIT' "$D/vm" && echo yes || echo no)"
cat "$D/fw"
wait_for 'RVMSPAWN-FB-DRAWN\|RVMSPAWN-FB-ERROR' "$D/vm" 2400
mode=$(sed -n 's/^RVMSPAWN-FB-MODE=//p' "$D/vm" | tr -d '\r')
picture "$mode"
# The guest hangs with its picture up; closing the window ends the run.
"$X" tests/scripts/x11.py close "$wid"
wait $vm
echo "HOST-RC=$?"
cat "$D/vm""#,
                    uki = rvmspawn_tests::UKI_BUILD,
                ),
            )
            .run()
    })
}

fn pixels_are_the_picture(r: &BootResult) {
    assert_eq!(
        r.value("HOST-PIXELS"),
        Some("ff0000 00ff00 0000ff ffffff"),
        "{}",
        r.output
    );
}

#[test]
fn the_window_shows_what_the_guest_draws_and_follows_its_mode() {
    let r = results().step("direct");
    assert_eq!(r.value("HOST-RC"), Some("0"), "{}", r.output);
    assert_eq!(
        r.value("RVMSPAWN-FB-MODE"),
        Some("1024x768"),
        "{}",
        r.output
    );
    pixels_are_the_picture(r);
    assert_eq!(
        r.value("HOST-WINDOW-SIZE"),
        Some("1024x768"),
        "{}",
        r.output
    );
    // No console= of rvmspawn's own before the test's (vmspawn's gui has none).
    let cmdline = r.value("RVMSPAWN-CMDLINE").expect("cmdline");
    assert!(
        cmdline.starts_with("console=tty0 console=ttyS0 "),
        "{cmdline}"
    );
}

#[test]
fn keys_arrive_in_order_and_the_pointer_is_scaled_to_the_tablet() {
    let r = results().step("direct");
    assert_eq!(r.value("RVMSPAWN-KEYS"), Some("30,48,46"), "{}", r.output);
    // (256, 600) in a 1024x768 screen on the tablet's 0..32767.
    let want = format!("{},{}", 256 * 32767 / 1023, 600 * 32767 / 767);
    assert_eq!(
        r.value("RVMSPAWN-CLICK"),
        Some(want.as_str()),
        "{}",
        r.output
    );
}

#[test]
fn closing_the_window_ends_the_vm_at_once() {
    let r = results().step("close");
    assert_eq!(r.value("HOST-RC"), Some("0"), "{}", r.output);
    let ms: u64 = r
        .value("HOST-CLOSE-MS")
        .and_then(|v| v.parse().ok())
        .expect("close time");
    assert!(ms < 10_000, "{ms} ms\n{}", r.output);
    // The guest was still running (it hangs) when the window closed.
    assert_eq!(r.count_lines("RVMSPAWN-ACTION=hang"), 1, "{}", r.output);
}

#[test]
fn uefi_firmware_draws_in_the_window_and_linux_takes_the_display_over() {
    let r = results().step("uefi");
    assert_eq!(r.value("HOST-RC"), Some("0"), "{}", r.output);
    assert_eq!(
        r.value("HOST-LINUX-STARTED-BEFORE"),
        Some("no"),
        "{}",
        r.output
    );
    let lit: u64 = r
        .value("HOST-CONTENT-PIXELS")
        .and_then(|v| v.parse().ok())
        .expect("the firmware's screen");
    assert!(lit > 0, "{}", r.output);
    pixels_are_the_picture(r);
}
