#!/bin/bash
# Network benchmark (not a test): iperf3 between the guest and the host over
# a TAP, rvmspawn -n (vhost-net, and its userspace virtio-net with vhost-net
# hidden) against QEMU -netdev tap with vhost=on and vhost=off, and
# rvmspawn --network-user-mode (passt) against QEMU's slirp (-nic user).
# Figures: TCP guest to host and host to guest (Mbit/s) and UDP 64-byte
# datagrams guest to host (packets/s), all as the receiver counts them.
# Usage: scripts/bench-net.sh [ROUNDS]     (default 3 rounds of each VMM)
#
# Everything runs in ONE nested test-host run (scripts/testhost.sh), because
# this machine's /dev/kvm cannot boot stock kernels; absolute figures there
# are deflated by TCG, so read the ratios. The work is in bench-net-inner.sh.
# Needs iperf3 installed (scripts/packages.txt): the test host runs its
# servers, and its binary and libraries go into the bench initramfs
# (scripts/assets.sh --bench-net); passt for rvmspawn's user mode.
#
# Environment: RVMSPAWN_BIN (default target/release/rvmspawn),
# RVMSPAWN_BENCH_NET_TIME (seconds per iperf3 job, 5),
# RVMSPAWN_BENCH_NET_TIMEOUT (seconds per boot, 240),
# RVMSPAWN_BENCH_NET_ONLY (space-separated VMM labels to run, e.g.
# "qemu-vhost-on rvmspawn-vhost"; default all six), and everything
# testhost.sh reads.
set -euo pipefail

rounds=${1:-3}
case $rounds in '' | *[!0-9]* | 0) echo "usage: $0 [ROUNDS]" >&2; exit 2 ;; esac
secs=${RVMSPAWN_BENCH_NET_TIME:-5}
case $secs in '' | *[!0-9]* | 0) echo "$0: RVMSPAWN_BENCH_NET_TIME wants whole seconds" >&2; exit 2 ;; esac

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
cd "$(dirname "$scripts")"

"$scripts/assets.sh" -q --bench-net

# Measured under TCG: a boot to /init ~5 s, each job its time plus ~2 s,
# the reports on the serial console ~1 s. Six VMMs x ROUNDS boots, generously.
timeout=$((240 + rounds * 6 * (60 + 4 * secs)))
exec "$scripts/testhost.sh" --timeout "$timeout" -- "$scripts/bench-net-inner.sh" "$rounds"
