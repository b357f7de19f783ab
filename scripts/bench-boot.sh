#!/bin/bash
# Boot-time benchmark (not a test): rvmspawn (bzImage, ELF vmlinux, UKI) against
# QEMU microvm (vmlinux) and QEMU pc (bzImage), booting the same Debian cloud
# kernel and busybox initramfs to /init.
# Usage: scripts/bench-boot.sh [--directory|--firmware|--secure-boot|--console|--systemd|--systemd-directory] [RUNS]
#        (default 5 boots per VMM)
# --directory: an OS tree over virtio-fs (rvmspawn -D against QEMU pc with
# vhost-user-fs-pci and virtiofsd, as vmspawn runs it); see bench-boot-inner.sh.
# --firmware: the UEFI path, a disk image through Debian's OVMF and systemd-boot
# (rvmspawn -i against QEMU q35 with the same OVMF); see bench-boot-inner.sh.
# --secure-boot: the same through the Secure Boot build with SMM, against the
# plain build and QEMU -M q35,smm=on; see bench-boot-inner.sh.
# --systemd: the Debian trixie image of the systemd tests to systemd's running state: rvmspawn
# -i and -x -i against QEMU pc with the image on virtio-blk, writable and -snapshot; see
# bench-boot-inner.sh. --systemd-directory: the same OS tree over virtio-fs (rvmspawn -D against
# QEMU pc with virtiofsd).
# --console: an output-heavy boot (full kernel log, then RVMSPAWN_BENCH_CONSOLE_KIB
# KiB, default 1024, from /init): rvmspawn's virtio console and UART against QEMU
# pc's UART and virtconsole; see bench-boot-inner.sh.
#
# Everything runs in ONE nested test-host run (scripts/testhost.sh), because
# this machine's /dev/kvm cannot boot stock kernels; absolute times there are
# inflated by TCG, so read the ratios. The work is in bench-boot-inner.sh.
# Environment: RVMSPAWN_BIN (default target/release/rvmspawn, relative to the
# repository root), RVMSPAWN_BENCH_BOOT_TIMEOUT (seconds per boot, 120), and
# everything testhost.sh reads.
set -euo pipefail

mode=()
case ${1:-} in
    --directory | --firmware | --secure-boot | --console | --systemd | --systemd-directory) mode=("$1"); shift ;;
esac
runs=${1:-5}
case $runs in '' | *[!0-9]* | 0) echo "usage: $0 [--directory|--firmware|--secure-boot|--console|--systemd|--systemd-directory] [RUNS]" >&2; exit 2 ;; esac

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
cd "$(dirname "$scripts")"

# A boot takes 5-15 s under TCG; 5 kinds of boot x (RUNS + 1 warm-up), generously.
# A firmware boot takes 25-40 s; 2 VMMs.
if [ "${mode[*]}" = --firmware ]; then
    timeout=$((120 + (runs + 1) * 2 * 150))
elif [ "${mode[*]}" = --secure-boot ]; then
    timeout=$((120 + (runs + 1) * 3 * 150))
elif [ "${mode[*]}" = --systemd ]; then
    # A boot of the trixie image took 31-59 s under TCG (2026-12-07); 4 kinds, no warm-up.
    timeout=$((300 + runs * 4 * 240))
elif [ "${mode[*]}" = --systemd-directory ]; then
    # A boot of the tree over virtio-fs took 134-173 s under TCG (2026-12-07); 2 kinds.
    timeout=$((300 + runs * 2 * 600))
elif [ "${mode[*]}" = --console ]; then
    # Two of the four push every byte through a UART: minutes each for a mebibyte.
    timeout=$((120 + (runs + 1) * 4 * 400))
else
    timeout=$((120 + (runs + 1) * 5 * 45))
fi
exec "$scripts/testhost.sh" --timeout "$timeout" -- "$scripts/bench-boot-inner.sh" "${mode[@]}" "$runs"
