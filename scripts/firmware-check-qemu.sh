#!/bin/bash
# Check the UEFI boot assets (.cache/assets/firmware/, built by assets.sh) with
# QEMU itself: q35 + Debian's OVMF as its descriptor 60-edk2-x86_64.json names
# it, KVM, inside the nested test host. This is the peer rvmspawn's firmware
# path is measured against (tests/tests/firmware.rs asserts the same lines),
# and shows that the assets and the guest's /init are right independently of
# rvmspawn.
#
# Usage: scripts/firmware-check-qemu.sh [CHECK...]   (default: esp uki nvram)
#   esp    esp.raw on virtio-blk: OVMF -> systemd-boot -> the Type #1 entry ->
#          /init; the guest is UEFI-booted, its command line is the entry's
#          options after systemd-boot's initrd=\initramfs.cpio.gz, LoaderDevicePartUUID is the ESP's PARTUUID, LoaderEntrySelected
#          is test.conf, a type 11 string from -smbios arrives.
#   uki    firmware/uki.efi through QEMU's -kernel (fw_cfg), no disk: systemd-stub
#          ran (StubInfo), the command line is the UKI's .cmdline.
#   nvram  esp-nvram.raw, guest reboots allowed: the first boot finds no test
#          variable, writes it and reboots; the second boot reads it back and
#          powers off; a second QEMU run on the same VARS file reads it again.
# Prints each boot's RVMSPAWN- lines, its time to /init and to exit (under the
# test host's emulation: compare ratios only), and PASS/FAIL per check; exit 0
# when all passed. The outer QEMU is testhost.sh's (the patched build when it
# exists: stock QEMU 7.2 aborts in ~40% of nested OVMF boots, exit 125).
# Environment: RVMSPAWN_FW_CHECK_TIMEOUT (seconds per boot, 300), and
# everything testhost.sh reads.
set -euo pipefail

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
root=$(dirname "$scripts")

if [ "${1:-}" != --inner ]; then
    for c in "$@"; do
        case $c in esp | uki | nvram) ;; *) echo "usage: $0 [esp|uki|nvram]..." >&2; exit 2 ;; esac
    done
    cd "$root"
    "$scripts/assets.sh" -q
    [ -f .cache/assets/firmware/esp-nvram.raw ] ||
        { echo "firmware-check: .cache/assets/firmware/ is missing (see assets.sh)" >&2; exit 1; }
    exec "$scripts/testhost.sh" --timeout 1800 -- "$scripts/firmware-check-qemu.sh" --inner "$@"
fi
shift
[ $# -gt 0 ] || set -- esp uki nvram
cd "$root"

fw=$root/.cache/assets/firmware
measure=$scripts/bench-boot-measure.py
export RVMSPAWN_BENCH_BOOT_TIMEOUT=${RVMSPAWN_FW_CHECK_TIMEOUT:-300}
[ -c /dev/kvm ] || { echo "firmware-check: no /dev/kvm" >&2; exit 1; }

# CODE and VARS as the plain (non-secure-boot, no SMM) descriptor names them.
# (No process substitution: the test host's /dev has no /dev/fd.)
paths=$(python3 -c '
import json
d = json.load(open("/usr/share/qemu/firmware/60-edk2-x86_64.json"))
m = d["mapping"]
print(m["executable"]["filename"], m["nvram-template"]["filename"])')
read -r code vars <<<"$paths"
echo "firmware-check: OVMF $code + $vars; $(qemu-system-x86_64 --version | head -n 1)"

work=$(mktemp -d /tmp/fwcheck.XXXXXX)
trap 'rm -rf "$work"' EXIT
failed=0

# The expected strings, read from the assets themselves.
test_options=$(MTOOLS_SKIP_CHECK=1 mtype -i "$fw/esp.raw@@1M" ::/loader/entries/test.conf |
    sed -n 's/^options //p' | tr -d '\r')
objcopy -O binary --only-section=.cmdline "$fw/uki.efi" "$work/uki.cmdline"
uki_cmdline=$(cat "$work/uki.cmdline")
partuuid=$(sfdisk --part-uuid "$fw/esp.raw" 1 | tr A-F a-f)

# boot LABEL LOG QEMU-ARGS...: one QEMU run through bench-boot-measure.py.
boot() {
    local label=$1 log=$2
    shift 2
    : >"$log"
    python3 "$measure" run "$label" "$work/times" "$log" -- \
        qemu-system-x86_64 -enable-kvm -cpu host -M q35 -m 512 -smp 1 -nographic -nodefaults \
        -serial stdio -drive "if=pflash,format=raw,unit=0,readonly=on,file=$code" "$@" >/dev/null || true
    tr -d '\r' <"$log" >"$log.txt"
    grep -a '^RVMSPAWN-' "$log.txt" | grep -av '^RVMSPAWN-SMBIOS11-RAW=' | sed "s/^/  [$label] /"
    awk -v l="$label" '$1 == l { t = $0 } END { split(t, f, " ");
        printf "  [%s] to /init %s ms, to exit %s ms, status %s\n", l, f[2], f[3], f[5] }' "$work/times"
}
value() { sed -n "s/^$1=//p" "$2.txt" | head -n 1; }
expect() { # DESCRIPTION GOT WANT
    if [ "$2" = "$3" ]; then
        echo "  ok: $1"
    else
        echo "  FAIL: $1: got '$2', want '$3'"
        check_failed=1
    fi
}
hex() { printf %s "$1" | od -An -v -tx1 | tr -d ' \n'; }

check_esp() {
    cp --sparse=always "$fw/esp.raw" "$work/esp.raw"
    cp "$vars" "$work/vars-esp.fd"
    local log=$work/esp.log cred=io.systemd.credential:fwcheck=qemu-peer
    boot esp "$log" -no-reboot -drive "if=pflash,format=raw,unit=1,file=$work/vars-esp.fd" \
        -drive "file=$work/esp.raw,format=raw,if=virtio" -smbios "type=11,value=$cred"
    expect "reached /init once" "$(grep -c '^RVMSPAWN-GUEST-INIT$' "$log.txt")" 1
    expect "UEFI boot" "$(value RVMSPAWN-EFI "$log")" yes
    # systemd-boot 252 puts initrd=PATH (the entry's initrd, backslashes) first.
    expect "cmdline is initrd= plus the entry's options" "$(value RVMSPAWN-CMDLINE "$log")" \
        "initrd=\\initramfs.cpio.gz $test_options"
    expect "LoaderDevicePartUUID is the ESP's PARTUUID" \
        "$(value RVMSPAWN-EFI-LoaderDevicePartUUID "$log" | tr 'A-F' 'a-f')" "$partuuid"
    expect "LoaderEntrySelected" "$(value RVMSPAWN-EFI-LoaderEntrySelected "$log")" test.conf
    expect "type 11 string from -smbios" \
        "$(grep -c "^RVMSPAWN-SMBIOS11-RAW=.*$(hex "$cred")00" "$log.txt")" 1
    expect "QEMU exit status" "$(awk '$1 == "esp" { print $5 }' "$work/times")" ok
}

check_uki() {
    cp "$vars" "$work/vars-uki.fd"
    local log=$work/uki.log
    boot uki "$log" -no-reboot -drive "if=pflash,format=raw,unit=1,file=$work/vars-uki.fd" \
        -kernel "$fw/uki.efi"
    expect "reached /init once" "$(grep -c '^RVMSPAWN-GUEST-INIT$' "$log.txt")" 1
    expect "UEFI boot" "$(value RVMSPAWN-EFI "$log")" yes
    expect "systemd-stub ran (StubInfo)" "$(value RVMSPAWN-EFI-StubInfo "$log" | cut -d' ' -f1)" \
        systemd-stub
    expect "cmdline is the UKI's .cmdline" "$(value RVMSPAWN-CMDLINE "$log")" "$uki_cmdline"
    expect "QEMU exit status" "$(awk '$1 == "uki" { print $5 }' "$work/times")" ok
}

check_nvram() {
    cp --sparse=always "$fw/esp-nvram.raw" "$work/nvram.raw"
    cp "$vars" "$work/vars-nvram.fd"
    local log=$work/nvram1.log
    # No -no-reboot: the guest's reboot restarts the firmware on the same VARS.
    boot nvram-reboot "$log" -drive "if=pflash,format=raw,unit=1,file=$work/vars-nvram.fd" \
        -drive "file=$work/nvram.raw,format=raw,if=virtio"
    expect "two boots" "$(grep -c '^RVMSPAWN-GUEST-INIT$' "$log.txt")" 2
    expect "values seen, in order" "$(sed -n 's/^RVMSPAWN-EFIVAR=//p' "$log.txt" | tr '\n' ' ')" \
        "none kept-across-boots "
    expect "written once" "$(grep -c '^RVMSPAWN-EFIVAR-WRITE=ok$' "$log.txt")" 1
    log=$work/nvram2.log
    boot nvram-restart "$log" -drive "if=pflash,format=raw,unit=1,file=$work/vars-nvram.fd" \
        -drive "file=$work/nvram.raw,format=raw,if=virtio"
    expect "restart: one boot" "$(grep -c '^RVMSPAWN-GUEST-INIT$' "$log.txt")" 1
    expect "restart: value kept in the VARS file" "$(value RVMSPAWN-EFIVAR "$log")" kept-across-boots
    expect "the VARS file changed" "$(cmp -s "$vars" "$work/vars-nvram.fd" && echo same || echo changed)" \
        changed
    # OVMF's store keeps each variable's UTF-16 name beside its data.
    expect "the VARS file holds the variable's name" "$(python3 -c '
import sys
print(open(sys.argv[1], "rb").read().count("RvmspawnTest".encode("utf-16-le")) > 0)' \
        "$work/vars-nvram.fd")" True
    expect "the VARS file keeps its size" "$(stat -c %s "$work/vars-nvram.fd")" "$(stat -c %s "$vars")"
}

for c in "$@"; do
    echo "firmware-check: $c"
    check_failed=0
    "check_$c"
    if [ "$check_failed" = 0 ]; then
        echo "firmware-check: $c PASS"
    else
        echo "firmware-check: $c FAIL; its console output:"
        for f in "$work/$c"*.log.txt; do sed 's/^/  | /' "$f"; done
        failed=1
    fi
done
exit "$failed"
