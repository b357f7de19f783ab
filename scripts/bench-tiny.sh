#!/bin/bash
# The VMM's own cost, start to exit (benchmark, not a test): rvmspawn against
# QEMU microvm on this machine's own /dev/kvm, no test host, with a tiny PVH
# guest that prints a line and powers off through the ACPI sleep register.
# Usage: scripts/bench-tiny.sh [RUNS]   (default 25 runs of each)
# Prints the medians and the ratio, then rvmspawn's phases (VM creation, memory
# and devices, first guest entry, guest stop, teardown, exit) from as many runs
# again at debug level. The work is in bench-tiny-measure.py.
# Environment: RVMSPAWN_BIN (default target/release/rvmspawn, built if missing),
# QEMU (default qemu-system-x86_64; left out with a note if not installed),
# RVMSPAWN_COMPARE_BINS (colon-separated other rvmspawn builds to run alongside).
set -euo pipefail

runs=${1:-25}
case $runs in '' | *[!0-9]* | 0) echo "usage: $0 [RUNS]" >&2; exit 2 ;; esac

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
cd "$(dirname "$scripts")"

[ -w /dev/kvm ] || { echo "bench-tiny: /dev/kvm is missing or not writable" >&2; exit 1; }
rvmspawn=${RVMSPAWN_BIN:-target/release/rvmspawn}
if [ -z "${RVMSPAWN_BIN:-}" ] && [ ! -x "$rvmspawn" ]; then
    cargo build --release -p rvmspawn
fi
qemu=$(command -v "${QEMU:-qemu-system-x86_64}" || true)
[ -n "$qemu" ] || echo "bench-tiny: no ${QEMU:-qemu-system-x86_64}; measuring rvmspawn alone" >&2
exec python3 "$scripts/bench-tiny-measure.py" "$runs" "$rvmspawn" ${qemu:+"$qemu"}
