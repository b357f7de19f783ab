#!/bin/bash
# Block-device benchmark (not a test): fio in the guest on a virtio disk backed
# by a raw file, with rvmspawn (-i) against QEMU's virtio-blk with cache=none
# and with its default cache mode (writeback).
# Usage: scripts/bench-blk.sh [ROUNDS]     (default 3 rounds of each VMM)
#
# Everything runs in ONE nested test-host run (scripts/testhost.sh), because
# this machine's /dev/kvm cannot boot stock kernels; absolute figures there
# are deflated by TCG, so read the ratios. The work is in bench-blk-inner.sh.
# Needs fio installed (scripts/packages.txt): its binary and libraries go into
# the bench initramfs (scripts/assets.sh --bench-blk).
#
# Environment: RVMSPAWN_BIN (default target/release/rvmspawn),
# RVMSPAWN_BENCH_BLK_RUNTIME (seconds per fio job, 10),
# RVMSPAWN_BENCH_BLK_DISK_MB (disk size, 1024), RVMSPAWN_BENCH_BLK_TIMEOUT
# (seconds per boot, 240), and everything testhost.sh reads;
# RVMSPAWN_TESTHOST_MEM defaults to 5G here (the disk lives in the test
# host's RAM, and QEMU's writeback mode caches it a second time).
set -euo pipefail

rounds=${1:-3}
case $rounds in '' | *[!0-9]* | 0) echo "usage: $0 [ROUNDS]" >&2; exit 2 ;; esac
runtime=${RVMSPAWN_BENCH_BLK_RUNTIME:-10}
case $runtime in '' | *[!0-9]* | 0) echo "$0: RVMSPAWN_BENCH_BLK_RUNTIME wants whole seconds" >&2; exit 2 ;; esac

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
cd "$(dirname "$scripts")"

"$scripts/assets.sh" -q --bench-blk
export RVMSPAWN_TESTHOST_MEM=${RVMSPAWN_TESTHOST_MEM:-5G}

# Measured under TCG: filling the disk ~20 s, one boot with two 10 s fio jobs
# ~35 s. 3 VMMs x ROUNDS boots plus set-up, generously.
timeout=$((300 + rounds * 3 * (90 + 4 * runtime)))
exec "$scripts/testhost.sh" --timeout "$timeout" -- "$scripts/bench-blk-inner.sh" "$rounds"
