#!/usr/bin/env bash
# Boot a real guest with rvmspawn: Debian's cloud kernel and a busybox initramfs whose /init
# prints what it sees (CPUs, memory, command line) and powers off. Extra arguments go to
# rvmspawn, e.g. `scripts/demo.sh --qemu-smp=2 rvmspawn.action=shell` for a shell in the guest.
#
# Where /dev/kvm is backed by hardware virtualisation, rvmspawn runs directly; elsewhere (as on
# the project's build machines, whose /dev/kvm is a software hypervisor) it runs inside the
# nested test host (docs/testing.md). RVMSPAWN_TEST_MODE=direct|testhost forces either.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --quiet
scripts/assets.sh

mode=${RVMSPAWN_TEST_MODE:-}
if [ -z "$mode" ]; then
    if { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; } && [ ! -d /sys/module/kvm_pvm ]; then
        mode=direct
    else
        mode=testhost
    fi
fi

cmd=(target/release/rvmspawn --linux=.cache/assets/guest/vmlinuz
     --initrd=.cache/assets/guest/initramfs.cpio.gz "$@")
if [ "$mode" = direct ]; then
    exec "${cmd[@]}"
else
    exec scripts/testhost.sh -- "${cmd[@]}"
fi
