#!/bin/bash
# Where a guest's boot time goes (not a test, not a benchmark): one test-host run that boots the
# guest test kernel and initramfs with rvmspawn (ELF vmlinux, bzImage and the UKI of
# scripts/assets.sh) and with QEMU microvm (vmlinux), each twice:
#  1. without "quiet", every console line stamped with the host's time (ms since the VMM was
#     started; the guest's own early clock is coarse under nested emulation and differs between
#     VMMs), to compare phases line by line;
#  2. with "quiet", counting the guest's VM exits in the test host's KVM by reason, port, MMIO
#     address and MSR (tracefs histogram triggers on the kvm events), to see what the guest makes
#     its VMM do;
#  3. with "quiet initcall_debug" (rvmspawn: vmlinux only; the bzImage and UKI hold the same
#     kernel), the guest kernel's own timeline and its slowest initcalls by its own clock (kvm-clock
#     by then; guest-init's rvmspawn.initcalls=N), side by side, to see which phases take longer
#     under which VMM.
# Usage: scripts/boot-profile.sh [OUTPUT-FILE]   (default: standard output)
# Runs under scripts/testhost.sh; the work is in the inner part below (--inner).
set -euo pipefail
scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
root=$(dirname "$scripts")
cd "$root"

if [ "${1:-}" != --inner ]; then
    out=${1:-/dev/stdout}
    "$scripts/testhost.sh" --timeout 900 -- "$scripts/boot-profile.sh" --inner >"$out"
    exit
fi

vmlinux=.cache/assets/guest/vmlinux
kernel=.cache/assets/guest/vmlinuz
initrd=.cache/assets/guest/initramfs.cpio.gz
uki=.cache/assets/firmware/uki.efi
rvmspawn=${RVMSPAWN_BIN:-target/release/rvmspawn}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The files from the test host's tmpfs (9p reads would be charged to whoever reads first), and
# the extracted-kernel cache with them.
cp "$vmlinux" "$kernel" "$initrd" "$uki" "$tmp/"
vmlinux=$tmp/vmlinux kernel=$tmp/vmlinuz initrd=$tmp/initramfs.cpio.gz uki=$tmp/uki.efi
export XDG_CACHE_HOME=$tmp/cache

rvm() { # KERNEL ARGS... (a UKI brings its own initrd)
    local k=$1 i=("--initrd=$initrd")
    shift
    [ "$k" = "$uki" ] && i=()
    "$rvmspawn" -q --tpm=no --qemu-vsock=no --qemu-mem=512M --qemu-smp=1 "--linux=$k" \
        "${i[@]}" "$@"
}
mvm() { # APPEND
    qemu-system-x86_64 -M microvm,x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on \
        -enable-kvm -cpu host -m 512 -smp 1 -nodefaults -nographic -no-reboot -serial stdio \
        -kernel "$vmlinux" -initrd "$initrd" -append "console=ttyS0 $1"
}

# The same state of the test host's memory before every boot: right after a few hundred MiB
# were written and freed a VM boots up to 40% faster there (see bench-boot-inner.sh).
condition() {
    head -c 300M /dev/zero >"$tmp/condition"
    rm -f "$tmp/condition"
}

stamped() { # LABEL COMMAND...: each output line with the ms since the start
    local label=$1
    shift
    condition
    echo "=== $label: console lines stamped on the host (ms since start)"
    python3 -c '
import subprocess, sys, time
t0 = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT)
for line in p.stdout:
    sys.stdout.write("%8.1f %s" % ((time.monotonic() - t0) * 1000, line.decode(errors="replace")))
p.wait()
print("%8.1f exit %d" % ((time.monotonic() - t0) * 1000, p.returncode))' bash -c '"$@"' bash "$@"
}
# stamped runs its command through a new bash: rvm and mvm, and what they read, go with it.
export -f rvm mvm
export rvmspawn vmlinux kernel initrd uki

rvm "$kernel" quiet >/dev/null 2>&1 # fills the extracted-kernel cache
for i in 1 2; do
    stamped "rvmspawn vmlinux #$i" rvm "$vmlinux"
    stamped "rvmspawn bzImage #$i" rvm "$kernel"
    stamped "rvmspawn UKI #$i" rvm "$uki"
    stamped "QEMU microvm vmlinux #$i" mvm ""
done

t=/sys/kernel/tracing
mountpoint -q "$t" || mount -t tracefs none "$t"
events="kvm_exit kvm_pio kvm_mmio kvm_msr kvm_userspace_exit"
keys() {
    case $1 in
        kvm_exit) echo exit_reason ;;
        kvm_pio) echo port,rw ;;
        kvm_mmio) echo gpa,type ;;
        kvm_msr) echo ecx,write ;;
        kvm_userspace_exit) echo reason ;;
    esac
}
exits() { # LABEL COMMAND...
    local label=$1 e
    shift
    for e in $events; do
        echo "hist:keys=$(keys "$e"):sort=hitcount.descending" >"$t/events/kvm/$e/trigger"
    done
    condition
    "$@" >/dev/null 2>&1 </dev/null || true
    echo "=== $label: VM exits (SVM exit codes; port rw 1 = write; mmio type 0 read, 1 write, 2 unsatisfied read)"
    for e in $events; do
        echo "--- $e"
        grep -v '^#' "$t/events/kvm/$e/hist" | grep . | head -n 20 || true
        echo "!hist:keys=$(keys "$e"):sort=hitcount.descending" >"$t/events/kvm/$e/trigger"
    done
}
for i in 1 2; do
    exits "rvmspawn vmlinux #$i" rvm "$vmlinux" quiet
    exits "rvmspawn bzImage #$i" rvm "$kernel" quiet
    exits "rvmspawn UKI #$i" rvm "$uki" quiet
    exits "QEMU microvm vmlinux #$i" mvm quiet
done

initcalls() { # LABEL COMMAND...
    local label=$1
    shift
    condition
    "$@" 2>&1 </dev/null | tr -d '\r' | sed -n 's/^RVMSPAWN-\(KLOG-AT\|INITCALLS-TOTAL-US\|INITCALL\)=//p' \
        >"$tmp/initcalls.$label" || true
}
for i in 1 2; do
    initcalls "rvmspawn#$i" rvm "$vmlinux" quiet initcall_debug rvmspawn.initcalls=25
    initcalls "microvm#$i" mvm "quiet initcall_debug rvmspawn.initcalls=25"
done
echo "=== the guest kernel's own clock (s) and its slowest initcalls (ms), quiet initcall_debug"
python3 - "$tmp" <<'PY'
import os, sys
labels = ["rvmspawn#1", "rvmspawn#2", "microvm#1", "microvm#2"]
runs = {}
for label in labels:
    at, calls, total = {}, {}, None
    with open(os.path.join(sys.argv[1], "initcalls." + label)) as f:
        for line in f:
            a, _, b = line.strip().partition(" ")
            if not b:
                total = int(a) / 1000 if a.isdigit() else None
            elif a.isdigit():
                calls[b] = int(a) / 1000
            else:
                at[b] = a
    runs[label] = (at, calls, total)
print("%-28s" % "" + "".join("%12s" % l for l in labels))
for event in ["kvm-clock", "initcalls", "pci-scan", "init"]:
    print("%-28s" % ("at " + event) + "".join("%12s" % runs[l][0].get(event, "-") for l in labels))
print("%-28s" % "all initcalls (ms)" + "".join(
    "%12s" % ("-" if runs[l][2] is None else "%.1f" % runs[l][2]) for l in labels))
names = {}
for l in labels:
    for n, ms in runs[l][1].items():
        names[n] = max(names.get(n, 0), ms)
for n in sorted(names, key=lambda n: -names[n])[:25]:
    print("%-28s" % n[:28] + "".join(
        "%12s" % ("%.1f" % runs[l][1][n] if n in runs[l][1] else "<top25") for l in labels))
PY
