#!/bin/bash
# The inside of scripts/bench-gui.sh (run in the test host): see there.
set -uo pipefail
only=
[ "$1" = --latency-only ] && { only=1; shift; }
runs=$1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root"
rvmspawn=${RVMSPAWN_BIN:-target/release/rvmspawn}
kernel=.cache/assets/gui/vmlinuz
initrd=.cache/assets/gui/initramfs.cpio.gz
X=/usr/bin/python3
out=$(mktemp -d)
export DISPLAY=:21
Xvfb :21 -screen 0 1600x1200x24 -nolisten tcp >"$out/xvfb.log" 2>&1 &
xvfb=$!
trap 'kill $xvfb 2>/dev/null; wait $xvfb 2>/dev/null; rm -rf "$out"' EXIT
i=0
until [ -S /tmp/.X11-unix/X21 ] || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done

args="console=ttyS0 quiet"
cmd_rvm_gui=("$rvmspawn" -q --tpm=no --qemu-vsock=no --qemu-mem=512M --console=gui
    "--linux=$kernel" "--initrd=$initrd")
cmd_rvm_plain=("$rvmspawn" -q --tpm=no --qemu-vsock=no --qemu-mem=512M --console=read-only
    --console-transport=serial "--linux=$kernel" "--initrd=$initrd")
qemu=(qemu-system-x86_64 -M pc -enable-kvm -cpu host -m 512M -smp 1 -nodefaults -no-reboot
    -serial stdio -kernel "$kernel" -initrd "$initrd")
cmd_qemu_gui=("${qemu[@]}" -device virtio-gpu-pci -device virtio-keyboard-pci
    -device virtio-tablet-pci -display gtk)
cmd_qemu_plain=("${qemu[@]}" -display none)

# Frame latency: 20 frames, the window's centre pixel.
latency() { # LABEL TITLE COMMAND...
    local label=$1 title=$2
    shift 2
    local log=$out/$label.log
    "$@" >"$log" 2>&1 &
    local vm=$!
    local n=0
    until grep -aq 'RVMSPAWN-FB-DRAWN\|RVMSPAWN-FB-ERROR' "$log" || [ $n -ge 3000 ] || ! kill -0 $vm 2>/dev/null; do
        sleep 0.1; n=$((n+1))
    done
    local wid size w h
    wid=$("$X" tests/scripts/x11.py wait-window "$title" 30) || { echo "$label: no window"; kill $vm; wait $vm; return; }
    size=$("$X" tests/scripts/x11.py size "$wid")
    w=${size%x*} h=${size#*x}
    "$X" tests/scripts/x11.py latency "$wid" "$((w / 2)),$((h / 2))" "$log" |
        sed "s/^/$label /" | tee -a "$out/latency"
    # The guest hangs after its frames: closing the window ends the VMM.
    "$X" tests/scripts/x11.py close "$wid"
    wait $vm
}
# At debug level rvmspawn also reports, for each update it presents, the time since the guest's
# flush reached the device: its own part of the latency, without the guest's.
latency rvmspawn "Virtual Machine bench" env SYSTEMD_LOG_LEVEL=debug "${cmd_rvm_gui[@]}" -M bench \
    console=ttyS0 quiet rvmspawn.fb=1 rvmspawn.fb-frames=20 rvmspawn.action=hang
if [ -e /usr/lib/x86_64-linux-gnu/qemu/ui-gtk.so ]; then
    latency qemu "QEMU" "${cmd_qemu_gui[@]}" \
        -append "console=ttyS0 quiet rvmspawn.fb=1 rvmspawn.fb-frames=20 rvmspawn.action=hang"
else
    echo "qemu: no GTK display (Debian package qemu-system-gui)"
fi

results=$out/results
[ -n "$only" ] && runs=-1
for i in $(seq 0 "$runs"); do
    # Run 0 warms the caches and is not counted.
    r=$results
    [ "$i" = 0 ] && r=$out/warm
    python3 scripts/bench-boot-measure.py run rvmspawn-gui "$r" "$out/boot.log" -- "${cmd_rvm_gui[@]}" $args
    python3 scripts/bench-boot-measure.py run rvmspawn-plain "$r" "$out/boot.log" -- "${cmd_rvm_plain[@]}" $args
    python3 scripts/bench-boot-measure.py run qemu-gui "$r" "$out/boot.log" -- "${cmd_qemu_gui[@]}" -append "$args"
    python3 scripts/bench-boot-measure.py run qemu-plain "$r" "$out/boot.log" -- "${cmd_qemu_plain[@]}" -append "$args"
done
echo "== frame latency (ms from the guest's write() to the window's pixel), median and max"
for label in rvmspawn qemu; do
    grep "^$label HOST-FRAME-LATENCY-MS=" "$out/latency" 2>/dev/null | sed 's/.*=[0-9]*,//' | grep -v 'timeout\|skipped' |
        sort -n | awk -v l="$label" '{ v[NR] = $1 } END { if (NR) printf "%-10s frames %d  median %.1f  max %.1f\n", l, NR, v[int((NR + 1) / 2)], v[NR]; else print l, "no frames" }'
done
echo "== rvmspawn's part: the guest's flush reaching the device to the window's present (ms)"
sed -n "s/.*, \([0-9.]*\) ms after the guest's flush.*/\1/p" "$out/rvmspawn.log" | sort -n |
    awk '{ v[NR] = $1 } END { if (NR) printf "presents %d  median %.1f  90%% %.1f  max %.1f\n", NR, v[int((NR + 1) / 2)], v[int(NR * 0.9 + 0.5)], v[NR]; else print "no presents traced" }'
[ -n "$only" ] && exit 0
echo "== boot to /init and peak RSS, medians of $runs"
python3 scripts/bench-boot-measure.py summary "$results" rvmspawn-gui rvmspawn-plain qemu-gui qemu-plain
echo "== what the display costs (gui minus plain, medians)"
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, init, total, rss, status = line.split()
    if status == "ok":
        rows.setdefault(label, []).append((float(init), int(rss) / 1024 if rss != "-" else 0))
for vmm in ("rvmspawn", "qemu"):
    g, p = rows.get(vmm + "-gui"), rows.get(vmm + "-plain")
    if not g or not p:
        print("%-9s not measured" % vmm)
        continue
    med = lambda r, i: statistics.median(x[i] for x in r)
    print("%-9s boot to /init %+.0f ms (%.0f vs %.0f), peak RSS %+.1f MiB (%.1f vs %.1f)" % (
        vmm, med(g, 0) - med(p, 0), med(g, 0), med(p, 0), med(g, 1) - med(p, 1), med(g, 1), med(p, 1)))
PY
