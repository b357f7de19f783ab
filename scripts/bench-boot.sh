#!/bin/bash
# Boot-time benchmark (not a test): rvmspawn against QEMU microvm and QEMU pc,
# booting the same Debian cloud kernel and busybox initramfs to /init.
# Usage: scripts/bench-boot.sh [--directory] [RUNS]     (default 5 boots per VMM)
# --directory: an OS tree over virtio-fs (rvmspawn -D against QEMU pc with
# vhost-user-fs-pci and virtiofsd, as vmspawn runs it); see bench-boot-inner.sh.
#
# Everything runs in ONE nested test-host run (scripts/testhost.sh), because
# this machine's /dev/kvm cannot boot stock kernels; absolute times there are
# inflated by TCG, so read the ratios. The work is in bench-boot-inner.sh.
# Environment: RVMSPAWN_BIN (default target/release/rvmspawn, relative to the
# repository root), RVMSPAWN_BENCH_BOOT_TIMEOUT (seconds per boot, 120), and
# everything testhost.sh reads.
set -euo pipefail

mode=()
if [ "${1:-}" = --directory ]; then
    mode=(--directory)
    shift
fi
runs=${1:-5}
case $runs in '' | *[!0-9]* | 0) echo "usage: $0 [--directory] [RUNS]" >&2; exit 2 ;; esac

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
cd "$(dirname "$scripts")"

# A boot takes 5-15 s under TCG; 3 VMMs x (RUNS + 1 warm-up) boots, generously.
timeout=$((120 + (runs + 1) * 3 * 45))
exec "$scripts/testhost.sh" --timeout "$timeout" -- "$scripts/bench-boot-inner.sh" "${mode[@]}" "$runs"
