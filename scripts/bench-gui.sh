#!/bin/bash
# Graphical console benchmark (not a test), in one nested test-host run under Xvfb:
#  - frame latency: the guest fills its framebuffer with a new colour (write() to /dev/fb0)
#    and prints a line; the host times from that line to the window's pixel showing the
#    colour (tests/scripts/x11.py latency), for rvmspawn's window and QEMU's GTK window;
#  - what the display costs: boot time to the guest's /init and peak RSS with and without
#    the graphical console, for rvmspawn and for QEMU pc (-display gtk with virtio-gpu,
#    keyboard and tablet, against -display none without them).
# Usage: scripts/bench-gui.sh [--latency-only] [RUNS]   (default 3 boots per kind, 20 frames
#        per VMM; --latency-only: the frames only)
# QEMU's GTK window needs Debian's qemu-system-gui; without it the QEMU gui rows fail and the
# rest is still measured. Absolute times are inflated by the emulated test host: read ratios.
# Environment: RVMSPAWN_BIN (default target/release/rvmspawn), everything testhost.sh reads.
set -euo pipefail
only=()
[ "${1:-}" = --latency-only ] && { only=(--latency-only); shift; }
runs=${1:-3}
case $runs in '' | *[!0-9]* | 0) echo "usage: $0 [RUNS]" >&2; exit 2 ;; esac
scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
cd "$(dirname "$scripts")"
exec "$scripts/testhost.sh" --timeout $((300 + (runs + 1) * 4 * 120)) -- "$scripts/bench-gui-inner.sh" "${only[@]}" "$runs"
